DROP TABLE answer_journal;

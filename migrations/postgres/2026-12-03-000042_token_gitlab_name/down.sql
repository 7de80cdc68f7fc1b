ALTER TABLE tokens DROP COLUMN gitlab_name;

DROP TABLE token_managers;

DROP TABLE audit_log;
DROP TABLE outbox;
DROP TABLE client_grants;
DROP TABLE clients;
DROP TABLE token_history;
DROP TABLE tokens;
DROP TABLE providers;
DROP TABLE meta;

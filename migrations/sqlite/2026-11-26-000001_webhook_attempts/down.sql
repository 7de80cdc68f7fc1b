DROP INDEX webhook_attempts_delivery;
DROP TABLE webhook_attempts;

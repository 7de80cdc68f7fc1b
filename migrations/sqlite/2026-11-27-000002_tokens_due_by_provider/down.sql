DROP INDEX tokens_lease_provider;
DROP INDEX tokens_due_provider;

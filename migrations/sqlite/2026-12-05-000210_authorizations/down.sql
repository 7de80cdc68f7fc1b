ALTER TABLE providers DROP COLUMN scopes;
DROP TABLE grant_owners;
DROP TABLE authorizations;

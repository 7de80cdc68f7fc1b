-- The name the token has at GitLab (shown in its UI and audit events), set with
-- `token update NAME --gitlab-name TEXT`; unknown (NULL) until then.
ALTER TABLE tokens ADD COLUMN gitlab_name TEXT;

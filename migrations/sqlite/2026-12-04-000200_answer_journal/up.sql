-- The answer journal: a provider's answer (the new secret and refresh token, sealed, and what
-- committing it needs) is written here first, in a transaction shared with the answers that
-- arrived at the same moment, and only then committed to the token with its history, outbox
-- and audit rows (which delete the journal row). A process killed between the two loses
-- nothing: the next claim of the token's expired lease commits the journaled answer instead of
-- probing or retrying. One row per token at most (a token has one attempt in flight).
CREATE TABLE answer_journal (
    token_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    attempt_id TEXT NOT NULL,
    secret BLOB,
    refresh_token BLOB,
    answer TEXT NOT NULL,
    journaled_at TIMESTAMP NOT NULL
);

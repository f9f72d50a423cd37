-- Revoked token ids (logouts, spent refresh tokens): the source of truth, which Redis mirrors as the fast
-- path. Kept only until the token would have expired anyway; the service deletes older rows periodically.
CREATE TABLE revoked_tokens (
    jti text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);

-- Revocations written while Redis could not be reached: whichever auth process next reaches Redis copies
-- them there and deletes them here. Kept in PostgreSQL, not in the writer's memory, so that they reach
-- Redis even if the process that wrote them is gone by then.
CREATE TABLE revocation_backlog (
    jti text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

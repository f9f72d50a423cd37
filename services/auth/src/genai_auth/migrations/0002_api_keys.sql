-- Long-lived credentials for scripts and services. A key reads "gk-<prefix>_<secret>": the prefix is
-- public (shown in lists, used to find the row), and only a SHA-256 of the whole key is kept.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    prefix text NOT NULL UNIQUE,
    key_hash bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz
);

-- Leads with user_id, so it serves the foreign key (cascading deletes) as well as one user's list,
-- which pages in (created_at, id) order.
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, created_at, id);

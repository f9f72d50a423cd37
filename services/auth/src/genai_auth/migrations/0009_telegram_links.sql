-- Telegram links (services/telegram-bot). A link ties a Telegram account to a user through an API key of
-- the "chat" scope, which the bot keeps (encrypted) and which can only chat and read the user's history.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_check CHECK (scope IN ('user', 'admin', 'chat'));

-- One-time codes a user makes in the web page and sends to the bot; only a SHA-256 of each is kept.
CREATE TABLE telegram_link_codes (
    code_hash bytea PRIMARY KEY CHECK (octet_length(code_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX telegram_link_codes_user_id_idx ON telegram_link_codes (user_id);

CREATE TABLE telegram_links (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    api_key_id uuid NOT NULL UNIQUE REFERENCES api_keys (id) ON DELETE CASCADE,
    telegram_user_id bigint NOT NULL,
    telegram_username text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
-- A Telegram account acts for one user at a time: linking it again ends its earlier link.
CREATE UNIQUE INDEX telegram_links_active_idx ON telegram_links (telegram_user_id) WHERE revoked_at IS NULL;
CREATE INDEX telegram_links_user_id_idx ON telegram_links (user_id, created_at);

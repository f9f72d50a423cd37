-- Accounts that log in with a password. API keys get their own table in a later migration.
CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username text NOT NULL,
    password_hash text NOT NULL,
    role text NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user')),
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Names are unique regardless of case ("Alice" and "alice" are one account); also the paging key.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

-- Users who sign in through the LDAP/AD directory: provisioned at their first login, with no password of
-- ours (the directory checks it), and their role and limits taken from their directory groups at every
-- login and session renewal. An admin's own overrides stay in `limits` (and `disabled`) and win.
ALTER TABLE users
    ADD COLUMN source text NOT NULL DEFAULT 'local' CHECK (source IN ('local', 'ldap')),
    -- The entry's DN when last seen, and the mapped groups that gave the role and limits.
    ADD COLUMN directory_dn text,
    ADD COLUMN directory_groups text[] NOT NULL DEFAULT '{}',
    -- The limits the groups give; `limits` (an admin's overrides) is laid over them, key by key.
    ADD COLUMN directory_limits jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN directory_checked_at timestamptz,
    ALTER COLUMN password_hash DROP NOT NULL,
    ADD CONSTRAINT users_password_by_source CHECK ((source = 'local') = (password_hash IS NOT NULL));

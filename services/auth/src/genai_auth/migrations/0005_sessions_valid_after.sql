-- Set when a password is reset (by an admin or genai-auth-admin): tokens issued before it are refused,
-- so whoever held the old password loses their sessions. NULL: no reset yet.
ALTER TABLE users ADD COLUMN sessions_valid_after timestamptz;

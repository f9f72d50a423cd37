-- Per-user limit overrides set by an admin: a JSON object with some of "requests_per_minute",
-- "tokens_per_minute", "concurrent_requests", "tokens_per_day", each an integer from 1 to 10^9 or -1
-- for unlimited. An absent key means the role's default, which the gateway holds in its settings.
-- The service validates the values (genai_auth.limits); the database only insists on an object.
ALTER TABLE users
    ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'
        CONSTRAINT users_limits_is_object CHECK (jsonb_typeof(limits) = 'object');

-- Every change that can alter an Authenticate answer is announced on the channel genai_auth_changes as
-- it commits, whoever makes it (any auth process, genai-auth-admin, a hand-written UPDATE): auth relays
-- the notices to gateways (WatchCredentials), which then forget what they cached for those credentials.
-- Payload: "user:<users.id>" (every credential of that user) or "token:<jti or api_keys.id>".
CREATE FUNCTION genai_auth_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('genai_auth_changes', 'user:' || OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE FUNCTION genai_auth_notify_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('genai_auth_changes', 'token:' || OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE FUNCTION genai_auth_notify_revoked_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('genai_auth_changes', 'token:' || NEW.jti);
    RETURN NULL;
END;
$$;

-- Any column of a user: role, disabled, limits, password (a reset ends sessions), username.
CREATE TRIGGER users_credential_changes AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION genai_auth_notify_user();

-- Not last_used_at, which a key's own use updates once a minute.
CREATE TRIGGER api_keys_credential_changes AFTER UPDATE OF revoked_at, expires_at, user_id, key_hash OR DELETE
    ON api_keys FOR EACH ROW EXECUTE FUNCTION genai_auth_notify_api_key();

CREATE TRIGGER revoked_tokens_credential_changes AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION genai_auth_notify_revoked_token();

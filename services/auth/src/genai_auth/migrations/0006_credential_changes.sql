-- Every change that can alter an Authenticate answer is announced on the channel genai_auth_changes as
-- it commits, whoever makes it (any auth process, genai-auth-admin, a hand-written UPDATE): auth relays
-- the notices to gateways (WatchCredentials), which then forget what they cached for those credentials.
-- Payload: "user:<users.id>" (every credential of that user), "token:<jti or api_keys.id>", or "all".
-- TG_ARGV: the notice's kind ("user" or "token") and the column that names the credential; the row as it
-- was (UPDATE, DELETE) or as it is (INSERT).
CREATE FUNCTION genai_auth_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'genai_auth_changes', TG_ARGV[0] || ':' || (to_jsonb(COALESCE(OLD, NEW)) ->> TG_ARGV[1])
    );
    RETURN NULL;
END;
$$;

CREATE FUNCTION genai_auth_announce_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('genai_auth_changes', 'all');
    RETURN NULL;
END;
$$;

-- Any column of a user: role, disabled, limits, password (a reset ends sessions), username.
CREATE TRIGGER users_credential_changes AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION genai_auth_announce('user', 'id');

-- Any column of a key but last_used_at, which the key's own use updates once a minute.
CREATE TRIGGER api_keys_credential_changes AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
    EXECUTE FUNCTION genai_auth_announce('token', 'id');
CREATE TRIGGER api_keys_credential_deletes AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION genai_auth_announce('token', 'id');

CREATE TRIGGER users_emptied AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION genai_auth_announce_all();
CREATE TRIGGER api_keys_emptied AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION genai_auth_announce_all();

CREATE TRIGGER revoked_tokens_credential_changes AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION genai_auth_announce('token', 'jti');

-- Who read or exported whose dialogs, and when. Rows are only ever inserted: the service has no call to
-- change or delete them, and the trigger below refuses UPDATE, DELETE and TRUNCATE from anyone using the
-- service's database role. The one exception is the retention job, which deletes events older than a cutoff
-- it announces in the transaction (SET LOCAL genai.audit_purge_before); only older rows can go that way.
-- No foreign keys: an event outlives the conversation it names.
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor_id uuid NOT NULL,
    actor_username text NOT NULL,
    action text NOT NULL
        CHECK (action IN ('read_conversation', 'export_conversation', 'list_conversations', 'export_user')),
    target_owner_id uuid,
    target_conversation_id uuid,
    request_id text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_events_at_idx ON audit_events (at);

CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    purge_before text := current_setting('genai.audit_purge_before', true);
BEGIN
    IF TG_OP = 'DELETE' AND purge_before IS NOT NULL AND purge_before <> '' THEN
        IF OLD.at < purge_before::timestamptz THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

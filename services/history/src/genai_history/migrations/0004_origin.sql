-- Where a conversation comes from: 'chat' (a dialog of the web page or the bot, listed there) or 'api' (a
-- script's call that asked for no conversation: kept for audit, usage and exports, listed apart so that a
-- script's 500 calls do not bury a person's dialogs). Every conversation stored before this migration was
-- shown in the page, so they become 'chat'; a constant default is recorded in the catalogue (PostgreSQL
-- 11+), so the existing rows are not rewritten. Writers name the origin of every new conversation: the
-- column keeps no default, so a writer that forgets fails instead of guessing.
ALTER TABLE conversations
    ADD COLUMN origin text NOT NULL DEFAULT 'chat'
        CONSTRAINT conversations_origin_check CHECK (origin IN ('chat', 'api'));

ALTER TABLE conversations ALTER COLUMN origin DROP DEFAULT;

-- A page of one origin is then an index range like the unfiltered list (0001): with only the owner's index,
-- listing a person's few dialogs would walk past every one of their scripts' calls. One composite index, not
-- a partial one per origin: the origin arrives as a statement parameter, and a generic plan cannot prove a
-- partial index's predicate from a parameter.
CREATE INDEX conversations_owner_origin_updated_idx
    ON conversations (owner_id, origin, updated_at DESC, id DESC);

-- The same for the admins' list of every owner's conversations of one origin.
CREATE INDEX conversations_origin_updated_idx ON conversations (origin, updated_at DESC, id DESC);

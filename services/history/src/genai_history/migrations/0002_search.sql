-- Full-text search over each owner's prompts and responses.
-- The 'simple' configuration lowercases words without stemming: Russian and English text share one column,
-- and a language's stemmer would mangle words of the other. A tsvector may not exceed 1 MB, so only the
-- first 50,000 characters of a prompt and 100,000 of a response are indexed (every word costs at most about
-- 12 bytes, so 150,000 characters stay under the limit whatever the text); longer texts are still stored.
ALTER TABLE messages
    ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', left(prompt, 50000) || ' ' || left(response, 100000))) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search_vector);

-- Search pages walk an owner's messages newest first.
CREATE INDEX messages_owner_created_idx ON messages (owner_id, created_at DESC, id DESC);

-- The usage report reads messages by day across owners.
CREATE INDEX messages_created_idx ON messages (created_at);

-- Admins list every owner's conversations newest updated first; retention deletes the oldest.
CREATE INDEX conversations_updated_idx ON conversations (updated_at DESC, id DESC);

-- Conversations and their messages. Every row carries owner_id so that every query is scoped by owner.
-- prompt and response stay plain text columns: full-text search can come later as its own migration
-- (a generated tsvector column and a GIN index) without touching these tables' shape.

CREATE TABLE conversations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id uuid NOT NULL,
    title text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Target of the messages' composite foreign key, so a message's owner is always its conversation's.
    CONSTRAINT conversations_id_owner_key UNIQUE (id, owner_id)
);

-- Both sort columns descending: the keyset condition (updated_at, id) < (..., ...) is then an index range.
CREATE INDEX conversations_owner_updated_idx ON conversations (owner_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid NOT NULL,
    owner_id uuid NOT NULL,
    -- Idempotency key set by writers that replay a spool; NULLs never collide.
    exchange_id text,
    prompt text NOT NULL,
    response text NOT NULL,
    source text NOT NULL CHECK (source IN ('model', 'cache')),
    model text,
    prompt_tokens integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    total_tokens integer NOT NULL DEFAULT 0,
    latency_ms integer NOT NULL DEFAULT 0,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_conversation_fkey FOREIGN KEY (conversation_id, owner_id)
        REFERENCES conversations (id, owner_id) ON DELETE CASCADE,
    CONSTRAINT messages_owner_exchange_key UNIQUE (owner_id, exchange_id)
);

CREATE INDEX messages_conversation_created_idx ON messages (conversation_id, created_at, id);

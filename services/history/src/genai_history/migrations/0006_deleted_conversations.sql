-- Conversations their owners deleted. The gateway names a new conversation's id itself and writes its
-- exchanges from a journal, which retries a batch whose answer it did not get (a deadline, a gateway that
-- died mid-pass). Without a record of the deletion, such a retry arriving after the owner deleted the
-- conversation would start it again under the same id, and a deleted dialog would come back. Starting a
-- conversation skips an id its owner deleted; retention forgets the records after a while
-- (`retention.TOMBSTONE_DAYS`), by when no journal still holds an exchange for them.
CREATE TABLE deleted_conversations (
    id uuid NOT NULL,
    owner_id uuid NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, owner_id)
);

CREATE INDEX deleted_conversations_deleted_at_idx ON deleted_conversations (deleted_at);

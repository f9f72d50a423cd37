-- Search in word forms: "зиму" finds "зима", "running" finds "run". PostgreSQL's `russian` configuration
-- stems Cyrillic words with the Russian Snowball stemmer and all-ASCII words with the English one (its
-- `asciiword` mapping is `english_stem`), so one configuration covers both languages of the same text
-- without either stemmer seeing the other's words. Both drop their stop words; the `simple` lexemes (every
-- word, lower-cased) are kept beside the stems, so that a query made only of stop words ("что", "IT") still
-- finds them (the store then searches with `simple`). `ё` is written `е` before parsing (many Russian
-- texts and keyboards use `е` for both), in the documents and, in the store, in every query. The first
-- characters only, as in 0002, keep every vector under 1 MB (a word found by both configurations alike is
-- one lexeme with the positions of both).
--
-- The generated column is recomputed for every existing row (ALTER TABLE rewrites the table once); the
-- GIN index is dropped with the old column and built again.
ALTER TABLE messages DROP COLUMN search_vector;

ALTER TABLE messages
    ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (
        to_tsvector('russian',
                    translate(left(prompt, 50000) || ' ' || left(response, 100000), 'ёЁ', 'еЕ'))
        || to_tsvector('simple',
                       translate(left(prompt, 50000) || ' ' || left(response, 100000), 'ёЁ', 'еЕ'))
    ) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search_vector);

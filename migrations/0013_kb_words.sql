-- 0013_kb_words: the knowledge base's vocabulary, for typo tolerance in tools/knowledge.py.
-- pg_trgm would do this, but the embedded PostgreSQL ships only vector and plpgsql, and an
-- external server may not allow extensions: a query word the knowledge base has never seen is
-- compared (in Python, by edit distance) with the known words of the same first letter and
-- about the same length, which the index below finds.

-- Surface words (lower case, letters only, 4-30 characters): a misspelling is corrected to a
-- word, then stemmed like any query word. Words of deleted or hidden articles stay; a
-- correction to one of them finds nothing and is harmless.
CREATE TABLE kb_words (
    word text PRIMARY KEY CHECK (word = lower(word) AND length(word) BETWEEN 4 AND 30)
);
CREATE INDEX kb_words_shape_idx ON kb_words (left(word, 1), length(word));

CREATE FUNCTION kb_words_of(t text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT DISTINCT w FROM regexp_split_to_table(lower(t), '[^[:alpha:]]+') AS w
    WHERE length(w) BETWEEN 4 AND 30
    -- one order for every writer: two imports adding the same new words cannot deadlock
    ORDER BY w
$$;

CREATE FUNCTION kb_words_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kb_words (word) SELECT kb_words_of(NEW.title || ' ' || NEW.content) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER knowledge_base_words AFTER INSERT OR UPDATE OF title, content ON knowledge_base
    FOR EACH ROW EXECUTE FUNCTION kb_words_add();

INSERT INTO kb_words (word)
SELECT DISTINCT w FROM knowledge_base k, kb_words_of(k.title || ' ' || k.content) AS w
ORDER BY w
ON CONFLICT DO NOTHING;

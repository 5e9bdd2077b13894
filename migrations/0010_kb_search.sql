-- 0010_kb_search: full text that keeps identifiers whole and weights titles and headings, for
-- the BM25 ranking of tools/knowledge.py. The text of chunks and products is indexed by one SQL
-- function (kb_tsv) and queries are split by another (kb_query_lexemes), so documents and
-- queries can never be tokenised two different ways.

-- Identifiers the english parser breaks apart: 'SEC-451' becomes 'sec' and '-451',
-- 'invalid_redirect_uri' three words, 'HTTP 429' two. Each is also indexed whole, lower-cased,
-- with '-', '_' and spaces dropped ('#sec451', '#invalidredirecturi', '#http429'), so 'SEC 451',
-- 'sec451' and 'SEC-451' meet. Kept: joined tokens with a digit or an underscore (codes, snake
-- case names, versions such as 2.3.1), letter-digit mixes (FB4291, e404), and a short word
-- followed by a 3-5 digit number (HTTP 429, error 403). The '#' keeps them apart from the
-- parser's own lexemes, which never start with it.
CREATE FUNCTION kb_identifiers(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT '#' || regexp_replace(lower(m[1]), '[-_[:space:]]+', '', 'g')), '{}')
    FROM regexp_matches(t,
        '(?:^|[^[:alnum:]_.-])('
        || '[[:alnum:]]+(?:[-_.:/][[:alnum:]]+)+'   -- joined: SEC-451, invalid_redirect_uri, 2.3.1
        || '|[[:alpha:]]+[[:digit:]][[:alnum:]]*'   -- letters then digits: FB4291, e404, oauth2
        || '|[[:alpha:]]{2,12}[[:space:]]+[[:digit:]]{3,5}(?![[:alnum:]])'  -- HTTP 429
        || ')(?=$|[^[:alnum:]_-])', 'g') AS m
    WHERE m[1] ~ '[[:digit:]_]' AND length(m[1]) BETWEEN 3 AND 80
$$;

-- A chunk's text: the article title weighted A, the chunk's Markdown headings B, its body D,
-- and its identifiers (no positions: BM25 counts each once, with its own weight).
CREATE FUNCTION kb_tsv(title text, content text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', coalesce(
               (SELECT string_agg(h[1], ' ') FROM regexp_matches(content, '^[[:blank:]]{0,3}#{1,6}[[:blank:]]+([^\n]*)$', 'gn') AS h),
               '')), 'B')
        || to_tsvector('english', regexp_replace(content, '^[[:blank:]]{0,3}#{1,6}[[:blank:]]+[^\n]*$', '', 'gn'))
        || array_to_tsvector(kb_identifiers(title || ' ' || content))
$$;

-- The lexemes a query is looked up by: the english lexemes and the identifiers, as kb_tsv.
CREATE FUNCTION kb_query_lexemes(q text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT DISTINCT l FROM unnest(tsvector_to_array(to_tsvector('english', q)) || kb_identifiers(q)) AS l ORDER BY l)
$$;

-- One lexeme as a tsquery, taken as it is (to_tsquery would stem the stem again).
CREATE FUNCTION kb_lexeme_query(lexeme text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery
$$;

UPDATE kb_chunks c SET tsv = kb_tsv(k.title, c.content) FROM knowledge_base k WHERE k.id = c.article_id;

-- Products: the title weighted A, the category B, the description D, plus identifiers.
DROP INDEX products_tsv_idx;
ALTER TABLE products DROP COLUMN tsv;
ALTER TABLE products ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', title), 'A')
    || setweight(to_tsvector('english', coalesce(category, '')), 'B')
    || to_tsvector('english', description)
    || array_to_tsvector(kb_identifiers(title || ' ' || description))) STORED;
CREATE INDEX products_tsv_idx ON products USING gin (tsv);

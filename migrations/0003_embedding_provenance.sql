-- 0003_embedding_provenance: each stored vector records which embedder made it, so
-- `crm-mcp kb reindex` can resume where it stopped and search never mixes vector spaces.

ALTER TABLE kb_chunks ADD COLUMN embedded_with text;
ALTER TABLE products ADD COLUMN embedded_with text;
UPDATE kb_chunks SET embedded_with = 'local/all-MiniLM-L6-v2' WHERE embedding IS NOT NULL;
UPDATE products SET embedded_with = 'local/all-MiniLM-L6-v2' WHERE embedding IS NOT NULL;
CREATE INDEX kb_chunks_stale_idx ON kb_chunks (id) WHERE embedding IS NULL;

-- 0002_knowledge_commerce: the knowledge base (articles, chunks, embeddings, full text), the
-- product catalogue and the commerce tables from seed 001 (orders, agent actions, preferences,
-- feedback, daily analytics), all keyed to the one customers table.

-- Which embedder produced the stored vectors. One row. The server refuses to start with a
-- different embedder until `crm-mcp kb reindex` re-embeds everything and updates this row
-- (and, for a new dimension, the vector column types and HNSW indexes).
CREATE TABLE embedding_space (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    provider    text NOT NULL CHECK (length(provider) BETWEEN 1 AND 50),
    model       text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    dimension   integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO embedding_space (provider, model, dimension) VALUES ('local', 'all-MiniLM-L6-v2', 384);

CREATE TABLE knowledge_base (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Stable key for imports: the Markdown path relative to the imported folder, or a slug.
    source_path   text UNIQUE CHECK (source_path IS NULL OR length(source_path) BETWEEN 1 AND 500),
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    content       text NOT NULL CHECK (length(content) BETWEEN 1 AND 1000000),
    category      text NOT NULL DEFAULT 'general' CHECK (category IN (
                      'general', 'account', 'billing', 'feature', 'troubleshooting',
                      'integrations', 'security', 'faq')),
    content_hash  text NOT NULL,
    source        text NOT NULL DEFAULT 'product-docs',
    is_active     boolean NOT NULL DEFAULT true,
    metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX knowledge_base_category_idx ON knowledge_base (category) WHERE is_active;
CREATE TRIGGER knowledge_base_touch BEFORE UPDATE ON knowledge_base
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- Articles are searched per chunk (long articles are split with overlap); results are folded
-- back to one hit per article. `category` and `is_active` are copied here so a filtered vector
-- search reads one table.
CREATE TABLE kb_chunks (
    id           bigserial PRIMARY KEY,
    article_id   uuid NOT NULL REFERENCES knowledge_base(id) ON DELETE CASCADE,
    chunk_index  integer NOT NULL CHECK (chunk_index >= 0),
    category     text NOT NULL,
    is_active    boolean NOT NULL DEFAULT true,
    content      text NOT NULL,
    embedding    vector(384),
    tsv          tsvector NOT NULL,
    UNIQUE (article_id, chunk_index)
);
CREATE INDEX kb_chunks_embedding_hnsw ON kb_chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX kb_chunks_tsv_idx ON kb_chunks USING gin (tsv);
CREATE INDEX kb_chunks_category_idx ON kb_chunks (category) WHERE is_active;

-- Commerce (seed 001) ---------------------------------------------------------------------------

CREATE TABLE products (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id  text NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 100),
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description  text NOT NULL DEFAULT '',
    category     text,
    price        numeric(12, 2) CHECK (price IS NULL OR price >= 0),
    currency     text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    is_active    boolean NOT NULL DEFAULT true,
    embedding    vector(384),
    tsv          tsvector GENERATED ALWAYS AS (
                     to_tsvector('english', title || ' ' || coalesce(category, '') || ' ' || description)) STORED,
    metadata     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_embedding_hnsw ON products USING hnsw (embedding vector_cosine_ops);
CREATE INDEX products_tsv_idx ON products USING gin (tsv);
CREATE TRIGGER products_touch BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- Orders synced from a store (Shopify or similar); the store's id is the idempotency key.
CREATE TABLE orders (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_order_id   text NOT NULL UNIQUE CHECK (length(external_order_id) BETWEEN 1 AND 100),
    order_number        text,
    customer_id         uuid REFERENCES customers(id),
    status              text NOT NULL CHECK (status IN ('pending', 'paid', 'fulfilled', 'cancelled', 'refunded')),
    financial_status    text,
    fulfillment_status  text,
    total_price         numeric(12, 2) NOT NULL CHECK (total_price >= 0),
    currency            text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    items               jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(items) = 'array'),
    shipping_address    jsonb,
    placed_at           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    synced_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id, placed_at DESC);

-- Actions an agent proposes or takes (refund, discount, order change), with approval state.
CREATE TABLE agent_actions (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid REFERENCES customers(id),
    conversation_id  uuid REFERENCES conversations(id),
    ticket_id        uuid REFERENCES tickets(id),
    order_id         uuid REFERENCES orders(id),
    action_type      text NOT NULL CHECK (action_type IN ('refund', 'discount', 'order_change', 'cancellation', 'credit')),
    details          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    amount           numeric(12, 2) CHECK (amount IS NULL OR amount >= 0),
    currency         text CHECK (currency IS NULL OR currency ~ '^[A-Z]{3}$'),
    approval_status  text NOT NULL DEFAULT 'pending'
                     CHECK (approval_status IN ('not_required', 'pending', 'approved', 'rejected')),
    decided_by       text,
    decided_at       timestamptz,
    result           text NOT NULL DEFAULT 'pending' CHECK (result IN ('pending', 'success', 'failed')),
    error_message    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((approval_status IN ('approved', 'rejected')) = (decided_at IS NOT NULL))
);
CREATE INDEX agent_actions_pending_idx ON agent_actions (created_at) WHERE approval_status = 'pending';
CREATE INDEX agent_actions_customer_idx ON agent_actions (customer_id);

CREATE TABLE customer_preferences (
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    key          text NOT NULL CHECK (key ~ '^[a-z][a-z0-9_]{0,63}$'),
    value        text NOT NULL CHECK (length(value) BETWEEN 1 AND 1000),
    confidence   real NOT NULL DEFAULT 0.5 CHECK (confidence BETWEEN 0 AND 1),
    learned_from text NOT NULL DEFAULT 'explicit' CHECK (learned_from IN ('conversation', 'purchase_history', 'explicit')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);
CREATE TRIGGER customer_preferences_touch BEFORE UPDATE ON customer_preferences
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- Ratings of agent replies or of a ticket's handling: CSAT on 1..5 (4 and 5 count as satisfied).
CREATE TABLE feedback (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id      uuid REFERENCES customers(id),
    conversation_id  uuid REFERENCES conversations(id),
    message_id       uuid REFERENCES messages(id),
    ticket_id        uuid REFERENCES tickets(id),
    channel          text CHECK (channel IS NULL OR channel IN ('email', 'whatsapp', 'web_form')),
    rating           smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment          text CHECK (comment IS NULL OR length(comment) <= 5000),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (message_id IS NOT NULL OR ticket_id IS NOT NULL)
);
-- One rating per message and one per ticket; a second rating replaces the first.
CREATE UNIQUE INDEX feedback_one_per_message ON feedback (message_id) WHERE message_id IS NOT NULL;
CREATE UNIQUE INDEX feedback_one_per_ticket ON feedback (ticket_id) WHERE ticket_id IS NOT NULL AND message_id IS NULL;
CREATE INDEX feedback_created_idx ON feedback (created_at);

-- Daily roll-up per channel ('all' for the total), rebuilt idempotently from the live tables.
CREATE TABLE analytics_daily (
    day                      date NOT NULL,
    channel                  text NOT NULL CHECK (channel IN ('all', 'email', 'whatsapp', 'web_form')),
    conversations            integer NOT NULL DEFAULT 0,
    messages_in              integer NOT NULL DEFAULT 0,
    messages_out             integer NOT NULL DEFAULT 0,
    tickets_opened           integer NOT NULL DEFAULT 0,
    tickets_resolved         integer NOT NULL DEFAULT 0,
    tickets_escalated        integer NOT NULL DEFAULT 0,
    avg_sentiment            real,
    median_first_response_s  double precision,
    csat_responses           integer NOT NULL DEFAULT 0,
    csat_satisfied           integer NOT NULL DEFAULT 0,
    refunds_count            integer NOT NULL DEFAULT 0,
    refunds_amount           numeric(12, 2) NOT NULL DEFAULT 0,
    computed_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, channel)
);

-- 0012_commerce: what issue 18 needs of the seed-001 commerce tables. Orders synced from
-- Shopify keep the store's updated_at (out-of-order webhooks lose to newer data), tracking and the
-- contact they were placed with; agent actions gain an idempotency key, the requester, a reason and
-- the decision's note, and the 'replacement' type; preferences record where a value came from; the
-- daily roll-up keeps the sums (not only averages) and samples that make days additive.

ALTER TABLE orders
    ADD COLUMN store_updated_at  timestamptz,
    ADD COLUMN contact_email     text CHECK (contact_email IS NULL OR length(contact_email) <= 320),
    ADD COLUMN contact_phone     text CHECK (contact_phone IS NULL OR length(contact_phone) <= 50),
    ADD COLUMN tracking          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tracking) = 'array'),
    ADD COLUMN refunded_amount   numeric(12, 2) NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0);
CREATE INDEX orders_number_idx ON orders (order_number);

ALTER TABLE agent_actions DROP CONSTRAINT agent_actions_action_type_check;
ALTER TABLE agent_actions ADD CONSTRAINT agent_actions_action_type_check
    CHECK (action_type IN ('refund', 'discount', 'replacement', 'cancellation', 'order_change', 'credit'));
ALTER TABLE agent_actions
    ADD COLUMN idempotency_key  text UNIQUE CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 200),
    ADD COLUMN reason           text CHECK (reason IS NULL OR length(reason) <= 2000),
    ADD COLUMN requested_by     text,
    ADD COLUMN requested_role   text,
    ADD COLUMN decision_note    text CHECK (decision_note IS NULL OR length(decision_note) <= 2000);
CREATE INDEX agent_actions_status_idx ON agent_actions (approval_status, created_at DESC, id);

-- Where a preference came from ('web_form', 'checkout', 'support call'...): consent needs it.
ALTER TABLE customer_preferences ADD COLUMN source text CHECK (source IS NULL OR length(source) BETWEEN 1 AND 100);

-- Sums and counts instead of averages so that days add up; response latencies kept as the day's
-- samples so a range's median and p90 are the same figures the live query computes.
ALTER TABLE analytics_daily
    ADD COLUMN sentiment_sum       double precision NOT NULL DEFAULT 0,
    ADD COLUMN sentiment_n         integer NOT NULL DEFAULT 0,
    ADD COLUMN latency_ms          double precision[] NOT NULL DEFAULT '{}';

-- The roll-up reads a day of messages and conversations at a time.
CREATE INDEX messages_created_idx ON messages (created_at);
CREATE INDEX conversations_started_idx ON conversations (started_at);

-- Found while generating a year of tickets: lpad() truncates, so ticket 10000 was numbered
-- TKT-1000 again (a unique violation from then on). Four digits at least, never fewer.
CREATE OR REPLACE FUNCTION crm_next_ticket_number() RETURNS text
LANGUAGE sql AS $$
    UPDATE counters SET value = value + 1 WHERE name = 'ticket'
    RETURNING 'TKT-' || CASE WHEN value < 10000 THEN lpad(value::text, 4, '0') ELSE value::text END;
$$;

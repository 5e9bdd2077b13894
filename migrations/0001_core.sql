-- 0001_core: customers and identities, conversations and messages, tickets, channel settings,
-- metrics. One coherent model unifying the three seed documents; migrations/README.md explains
-- each choice. Constraints do the guarding: the tools rely on them instead of check-then-act.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE FUNCTION crm_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- Customers ------------------------------------------------------------------------------------

CREATE TABLE customers (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 200),
    company             text CHECK (company IS NULL OR length(company) BETWEEN 1 AND 200),
    plan                text NOT NULL DEFAULT 'free'
                        CHECK (plan IN ('free', 'starter', 'professional', 'enterprise')),
    preferred_language  text NOT NULL DEFAULT 'en' CHECK (preferred_language ~ '^[a-z]{2}(-[A-Z]{2})?$'),
    external_ref        text UNIQUE CHECK (external_ref IS NULL OR length(external_ref) BETWEEN 1 AND 100),
    metadata            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    first_contact_at    timestamptz,
    last_contact_at     timestamptz,
    total_interactions  integer NOT NULL DEFAULT 0 CHECK (total_interactions >= 0),
    -- Running mean of inbound message sentiment on the -1..1 scale (see customer_sentiment).
    sentiment_avg       real CHECK (sentiment_avg IS NULL OR sentiment_avg BETWEEN -1 AND 1),
    -- Set when this record was merged into another; merged records keep no identities.
    merged_into         uuid REFERENCES customers(id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (merged_into IS NULL OR merged_into <> id)
);
CREATE INDEX customers_name_idx ON customers (lower(name) text_pattern_ops);
CREATE INDEX customers_last_contact_idx ON customers (last_contact_at DESC NULLS LAST);
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- One row per way of reaching a customer. `value` is normalised (emails lower-cased and
-- IDNA-normalised, phones and WhatsApp numbers in E.164), so lookups are exact index probes.
CREATE TABLE customer_identifiers (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('email', 'phone', 'whatsapp')),
    value           text NOT NULL CHECK (
                        (kind = 'email' AND value ~ '^[^@\s]+@[^@\s]+$' AND value = lower(value))
                        OR (kind IN ('phone', 'whatsapp') AND value ~ '^\+[1-9][0-9]{6,14}$')),
    verified        boolean NOT NULL DEFAULT false,
    source_channel  text CHECK (source_channel IS NULL OR source_channel IN ('email', 'whatsapp', 'web_form')),
    is_primary      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, value)
);
CREATE INDEX customer_identifiers_customer_idx ON customer_identifiers (customer_id);
CREATE INDEX customer_identifiers_value_idx ON customer_identifiers (value);

-- Sentiment history: one row per scored inbound message (002 kept a JSON array on the customer;
-- a table is append-only, indexable and never rewritten).
CREATE TABLE customer_sentiment (
    id           bigserial PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    message_id   uuid UNIQUE,
    channel      text NOT NULL CHECK (channel IN ('email', 'whatsapp', 'web_form')),
    score        real NOT NULL CHECK (score BETWEEN -1 AND 1),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_sentiment_customer_idx ON customer_sentiment (customer_id, recorded_at DESC);

-- Audit trail of merge_customers.
CREATE TABLE customer_merges (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    primary_id    uuid NOT NULL REFERENCES customers(id),
    duplicate_id  uuid NOT NULL REFERENCES customers(id),
    moved         jsonb NOT NULL DEFAULT '{}',
    reason        text,
    merged_by     text,
    merged_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (primary_id <> duplicate_id)
);

-- Conversations ---------------------------------------------------------------------------------

CREATE TABLE conversations (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id        uuid NOT NULL REFERENCES customers(id),
    initial_channel    text NOT NULL CHECK (initial_channel IN ('email', 'whatsapp', 'web_form')),
    current_channel    text NOT NULL CHECK (current_channel IN ('email', 'whatsapp', 'web_form')),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'escalated', 'closed')),
    -- [{"from": "email", "to": "whatsapp", "at": "..."}], appended by ingest_message.
    channel_switches   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(channel_switches) = 'array'),
    sentiment          real CHECK (sentiment IS NULL OR sentiment BETWEEN -1 AND 1),
    message_count      integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    thread_ref         text,
    escalation_reason  text,
    resolution_type    text CHECK (resolution_type IS NULL OR resolution_type IN ('resolved', 'escalated', 'abandoned')),
    metadata           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    started_at         timestamptz NOT NULL DEFAULT now(),
    last_activity_at   timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'closed') = (ended_at IS NOT NULL))
);
-- At most one open (active or escalated) conversation per customer: two messages racing to
-- start one collide here instead of creating two.
CREATE UNIQUE INDEX conversations_one_open_per_customer ON conversations (customer_id)
    WHERE status <> 'closed';
CREATE INDEX conversations_customer_idx ON conversations (customer_id, last_activity_at DESC);
CREATE INDEX conversations_open_activity_idx ON conversations (last_activity_at) WHERE status <> 'closed';
CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- Tickets --------------------------------------------------------------------------------------

-- Gapless TKT-0001 numbering. A sequence would burn numbers on rolled-back calls; this counter
-- row is updated inside the creating transaction, so a failed call uses no number.
CREATE TABLE counters (
    name   text PRIMARY KEY,
    value  bigint NOT NULL CHECK (value >= 0)
);
INSERT INTO counters (name, value) VALUES ('ticket', 0);

CREATE FUNCTION crm_next_ticket_number() RETURNS text
LANGUAGE sql AS $$
    UPDATE counters SET value = value + 1 WHERE name = 'ticket'
    RETURNING 'TKT-' || lpad(value::text, 4, '0');
$$;

CREATE TABLE tickets (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_number       text NOT NULL UNIQUE DEFAULT crm_next_ticket_number()
                        CHECK (ticket_number ~ '^TKT-[0-9]{4,}$'),
    customer_id         uuid NOT NULL REFERENCES customers(id),
    conversation_id     uuid REFERENCES conversations(id),
    subject             text NOT NULL CHECK (length(subject) BETWEEN 1 AND 500),
    category            text NOT NULL DEFAULT 'general' CHECK (category IN (
                            'general', 'account_access', 'billing', 'technical', 'bug_report',
                            'how_to', 'feature_request', 'complaint', 'orders')),
    priority            text NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high', 'critical')),
    status              text NOT NULL DEFAULT 'open' CHECK (status IN (
                            'open', 'in_progress', 'waiting', 'escalated', 'resolved', 'closed')),
    source_channel      text NOT NULL CHECK (source_channel IN ('email', 'whatsapp', 'web_form')),
    assigned_to         text CHECK (assigned_to IS NULL OR length(assigned_to) BETWEEN 1 AND 200),
    escalation_reason   text,
    resolution_notes    text,
    sla_due_at          timestamptz,
    sla_breached_at     timestamptz,
    first_response_at   timestamptz,
    escalated_at        timestamptz,
    resolved_at         timestamptz,
    closed_at           timestamptz,
    metadata            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (status NOT IN ('resolved', 'closed') OR resolution_notes IS NOT NULL),
    CHECK (status <> 'escalated' OR escalation_reason IS NOT NULL)
);
-- One unfinished ticket per conversation ("ticket before response" reuses it).
CREATE UNIQUE INDEX tickets_one_open_per_conversation ON tickets (conversation_id)
    WHERE status NOT IN ('resolved', 'closed') AND conversation_id IS NOT NULL;
CREATE INDEX tickets_queue_idx ON tickets (status, priority, created_at DESC);
CREATE INDEX tickets_customer_idx ON tickets (customer_id, created_at DESC);
CREATE INDEX tickets_sla_idx ON tickets (sla_due_at)
    WHERE sla_breached_at IS NULL AND status NOT IN ('resolved', 'closed', 'escalated');
CREATE TRIGGER tickets_touch BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

-- Ticket history: status changes, assignments, internal notes (never sent to a customer).
CREATE TABLE ticket_events (
    id          bigserial PRIMARY KEY,
    ticket_id   uuid NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN (
                    'created', 'status', 'priority', 'category', 'assignment', 'note',
                    'escalation', 'sla_breach', 'merge')),
    from_value  text,
    to_value    text,
    note        text,
    actor       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ticket_events_ticket_idx ON ticket_events (ticket_id, id);

-- Messages -------------------------------------------------------------------------------------

CREATE TABLE messages (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id        uuid NOT NULL REFERENCES conversations(id),
    customer_id            uuid NOT NULL REFERENCES customers(id),
    ticket_id              uuid REFERENCES tickets(id),
    channel                text NOT NULL CHECK (channel IN ('email', 'whatsapp', 'web_form')),
    direction              text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    role                   text NOT NULL CHECK (role IN ('customer', 'agent', 'human', 'system')),
    -- Control characters are stripped before storage; this check keeps any that slip through out.
    content                text NOT NULL CHECK (content !~ '[\u0001-\u0008\u000B\u000C\u000E-\u001F\u007F]'),
    subject                text,
    content_type           text NOT NULL DEFAULT 'text' CHECK (content_type IN ('text', 'html', 'attachment_notice')),
    -- The channel's own id (Gmail message id, Twilio SID, wamid); the dedup key with `channel`.
    channel_message_id     text CHECK (channel_message_id IS NULL OR length(channel_message_id) BETWEEN 1 AND 500),
    thread_ref             text,
    -- Outbound only: the outbox state bridges drive (pending -> sent -> delivered -> read; failed).
    delivery_status        text CHECK (delivery_status IS NULL OR delivery_status IN (
                               'pending', 'sent', 'delivered', 'read', 'failed')),
    delivery_error         text,
    delivery_updated_at    timestamptz,
    sentiment              real CHECK (sentiment IS NULL OR sentiment BETWEEN -1 AND 1),
    processing_latency_ms  integer CHECK (processing_latency_ms IS NULL OR processing_latency_ms >= 0),
    metadata               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (delivery_status IS NULL OR (direction = 'outbound' AND role IN ('agent', 'human'))),
    UNIQUE (channel, channel_message_id)
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at, id);
CREATE INDEX messages_customer_idx ON messages (customer_id, created_at DESC);
CREATE INDEX messages_outbox_idx ON messages (channel, created_at) WHERE delivery_status = 'pending';

-- Idempotency for bridges and queues: a source's delivery id is processed once (002).
CREATE TABLE processed_messages (
    source        text NOT NULL CHECK (length(source) BETWEEN 1 AND 100),
    external_id   text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 500),
    message_id    uuid REFERENCES messages(id) ON DELETE SET NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, external_id)
);
CREATE INDEX processed_messages_at_idx ON processed_messages (processed_at);

-- Channel settings ------------------------------------------------------------------------------

CREATE TABLE channel_configs (
    channel              text PRIMARY KEY CHECK (channel IN ('email', 'whatsapp', 'web_form')),
    is_enabled           boolean NOT NULL DEFAULT true,
    max_response_length  integer NOT NULL CHECK (max_response_length BETWEEN 50 AND 100000),
    -- WhatsApp splits long replies into several messages; other channels are capped.
    split_long_replies   boolean NOT NULL DEFAULT false,
    tone                 text NOT NULL CHECK (tone IN ('formal', 'conversational', 'semi-formal')),
    response_template    text,
    api_config_ref       text,
    metadata             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER channel_configs_touch BEFORE UPDATE ON channel_configs
    FOR EACH ROW EXECUTE FUNCTION crm_touch_updated_at();

INSERT INTO channel_configs (channel, max_response_length, split_long_replies, tone, response_template, api_config_ref) VALUES
('email', 2000, false, 'formal',
 E'Hi {{customer_name}},\n\n{{response_body}}\n\nBest regards,\nFlowbase Support Team\nsupport@flowbase.example | status.flowbase.example',
 'GMAIL_'),
('whatsapp', 1600, true, 'conversational', '{{response_body}}', 'TWILIO_'),
('web_form', 1000, false, 'semi-formal',
 E'Hi {{customer_name}},\n\n{{response_body}}\n\nYour ticket reference: {{ticket_number}}\nTrack your ticket at support.flowbase.example',
 NULL);

-- Metrics --------------------------------------------------------------------------------------

CREATE TABLE agent_metrics (
    id           bigserial PRIMARY KEY,
    metric_type  text NOT NULL CHECK (metric_type IN (
                     'response_latency', 'escalation', 'sentiment', 'tool_call',
                     'conversation_count', 'message_volume', 'ticket_opened', 'ticket_resolved',
                     'first_response_time', 'sla_breach')),
    channel      text CHECK (channel IS NULL OR channel IN ('email', 'whatsapp', 'web_form')),
    value        double precision NOT NULL,
    ticket_id    uuid,
    message_id   uuid,
    metadata     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_metrics_type_time_idx ON agent_metrics (metric_type, recorded_at);
CREATE INDEX agent_metrics_channel_time_idx ON agent_metrics (channel, recorded_at) WHERE channel IS NOT NULL;
-- A metric tied to one ticket (escalation, SLA breach) is counted once per ticket.
CREATE UNIQUE INDEX agent_metrics_once_per_ticket ON agent_metrics (metric_type, ticket_id)
    WHERE ticket_id IS NOT NULL AND metric_type IN ('escalation', 'sla_breach', 'ticket_opened', 'first_response_time');

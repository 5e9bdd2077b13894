-- 0007_agent_turns: who holds an agent lease, how long its holder may act on the conversation,
-- and one record per agent turn.
--
-- agent_lease_holder is the principal that claimed the conversation last (an API token's name, a
-- JWT subject, or one stdio server process). It is kept when the lease ends: a reply or an
-- escalation ends the lease at once (0006's triggers) so the next customer message is claimable,
-- yet the holder still finishes its turn (the holding reply after an escalation, the turn record).
-- agent_scope_until is the end of the lease as claimed; the server lets the holder touch the
-- conversation's customer until then, unless someone else has claimed the conversation since.

ALTER TABLE conversations
    ADD COLUMN agent_lease_holder text CHECK (agent_lease_holder IS NULL OR length(agent_lease_holder) BETWEEN 1 AND 300),
    ADD COLUMN agent_scope_until timestamptz;

CREATE INDEX conversations_agent_holder_idx ON conversations (agent_lease_holder, agent_scope_until)
    WHERE agent_lease_holder IS NOT NULL;

-- What the agent did on each turn, for staff review and get_metrics. One row per claim attempt
-- of a message: a retried record of the same turn changes nothing.
CREATE TABLE agent_turns (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id         uuid NOT NULL REFERENCES messages(id),
    attempt            integer NOT NULL CHECK (attempt >= 1),
    conversation_id    uuid NOT NULL REFERENCES conversations(id),
    customer_id        uuid NOT NULL REFERENCES customers(id),
    ticket_id          uuid REFERENCES tickets(id),
    holder             text NOT NULL,
    decision           text NOT NULL CHECK (decision IN (
                           'answered', 'escalated_rule', 'escalated_no_answer', 'escalated_error',
                           'escalated_model_failure')),
    reason             text CHECK (reason IS NULL OR length(reason) <= 500),
    tools_called       jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tools_called) = 'array'),
    article_ids        uuid[] NOT NULL DEFAULT '{}',
    model              text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    prompt_tokens      integer NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens  integer NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    latency_ms         integer NOT NULL CHECK (latency_ms >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, attempt)
);

CREATE INDEX agent_turns_created_idx ON agent_turns (created_at);
CREATE INDEX agent_turns_conversation_idx ON agent_turns (conversation_id, created_at);

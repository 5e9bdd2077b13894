-- 0006_agent_queue: the agent's work queue (claim_inbound). A lease is held per conversation, not
-- per message: one agent answers a conversation at a time, whatever number of customer messages
-- wait in it. A reply by an agent or a person, or the conversation leaving 'active' (escalated,
-- closed), ends the lease; a lease that lapses (the agent died) makes the conversation claimable
-- again. A NOTIFY on every new customer message and on every ended lease lets a waiting
-- claim_inbound wake at once instead of polling.

ALTER TABLE conversations
    ADD COLUMN agent_lease_until timestamptz,
    ADD COLUMN agent_claims integer NOT NULL DEFAULT 0 CHECK (agent_claims >= 0);

CREATE INDEX conversations_agent_lease_idx ON conversations (agent_lease_until) WHERE agent_lease_until IS NOT NULL;

CREATE FUNCTION crm_inbound_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Delivered at commit, only to sessions that LISTEN; no payload (no customer data in it).
    PERFORM pg_notify('crm_inbound', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_inbound_customer AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.direction = 'inbound' AND NEW.role = 'customer')
    EXECUTE FUNCTION crm_inbound_notify();

-- A reply ends the conversation's lease (send_response needs no knowledge of the queue).
CREATE FUNCTION crm_agent_lease_end_on_reply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET agent_lease_until = NULL
    WHERE id = NEW.conversation_id AND agent_lease_until IS NOT NULL;
    IF FOUND THEN
        PERFORM pg_notify('crm_inbound', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_reply_ends_agent_lease AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.direction = 'outbound' AND NEW.role IN ('agent', 'human'))
    EXECUTE FUNCTION crm_agent_lease_end_on_reply();

-- Escalating or closing the conversation ends the lease too (escalate_to_human, the SLA sweep).
CREATE FUNCTION crm_agent_lease_end_on_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.agent_lease_until := NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER conversations_status_ends_agent_lease BEFORE UPDATE OF status ON conversations
    FOR EACH ROW WHEN (NEW.status <> 'active' AND NEW.agent_lease_until IS NOT NULL)
    EXECUTE FUNCTION crm_agent_lease_end_on_status();

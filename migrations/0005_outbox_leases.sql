-- 0005_outbox_leases: bridges claim outbound messages with a lease (claim_outbox). A bridge that
-- crashes never reports back; when its lease lapses the message is pending and claimable again.
-- A NOTIFY on every new pending message lets a waiting claim_outbox wake at once instead of
-- polling (a lapsed lease sends nothing: the waiter also wakes when the next lease lapses).

ALTER TABLE messages
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN delivery_attempts integer NOT NULL DEFAULT 0 CHECK (delivery_attempts >= 0),
    ADD CHECK (lease_until IS NULL OR delivery_status = 'pending');

-- Claimable = pending and not leased, or leased with the lease lapsed: messages_outbox_idx
-- (channel, created_at) WHERE delivery_status = 'pending' from 0001 serves the claim as it is.

CREATE FUNCTION crm_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Delivered at commit, only to sessions that LISTEN; the payload is the channel alone.
    PERFORM pg_notify('crm_outbox', NEW.channel);
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_outbox_pending AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.delivery_status = 'pending')
    EXECUTE FUNCTION crm_outbox_notify();

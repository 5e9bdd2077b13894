-- ingest_message in one round trip: the whole intake (dedup, identity, conversation, ticket,
-- message and roll-ups) as one server-side function called as one statement, so one message
-- costs one round trip and one implicit transaction instead of 7-9 statements inside
-- BEGIN ... COMMIT. tools/intake.py keeps what is pure computation (validation, normalised
-- identities, sentiment, classification, SLA due time, escalation rules) and builds the result.
--
-- The function is VOLATILE, so every statement in it takes a fresh snapshot: the lookups after
-- the advisory locks see whatever the previous holder of the same keys committed.

-- Likely duplicates of the given customers: same name (case-insensitive), not merged, at most
-- 3 in all, same company first, then most recent contact. The same rule as
-- tools/customers.py LIKELY_DUPLICATES_SQL (which it can call instead of its own copy).
CREATE FUNCTION crm_likely_duplicates(ids uuid[])
RETURNS TABLE (duplicate_of uuid, id uuid, name text, company text, last_contact_at timestamptz, same_company boolean)
LANGUAGE sql STABLE AS $$
    SELECT m.id, d.id, d.name, d.company, d.last_contact_at, d.same_company
    FROM customers m
    CROSS JOIN LATERAL (
        SELECT c.id, c.name, c.company, c.last_contact_at,
               coalesce(lower(c.company) = lower(m.company), false) AS same_company
        FROM customers c
        WHERE lower(c.name) = lower(m.name) AND c.id <> m.id AND c.merged_into IS NULL
          AND NOT (c.id = ANY(ids) AND c.id < m.id)
        ORDER BY same_company DESC, c.last_contact_at DESC NULLS LAST, c.id
        LIMIT 3
    ) d
    WHERE m.id = ANY(ids) AND m.name IS NOT NULL AND m.merged_into IS NULL
    ORDER BY array_position(ids, m.id), d.same_company DESC, d.last_contact_at DESC NULLS LAST, d.id
    LIMIT 3
$$;

-- One inbound message. Arguments:
--   p_lock_keys      advisory lock keys, in the order every caller takes them (message key first,
--                    then the sender's identities sorted), so two callers never deadlock on them
--   p_kinds/p_values the sender's normalised identities, in the caller's order
--   p_window_hours   conversation reuse window
--   p_category/p_priority/p_sla_due/p_ticket_subject: a new ticket's classification, used only
--                    when the message opens a ticket
--   p_latency_ms     time spent before this call; the function adds its own
-- Returns one jsonb object: {"duplicate": true, ...original ids} or the full outcome.
CREATE FUNCTION crm_ingest(
    p_lock_keys text[], p_channel text, p_cmid text, p_kinds text[], p_values text[], p_name text,
    p_content text, p_subject text, p_thread_ref text, p_in_reply_to text[], p_received timestamptz,
    p_received_iso text, p_sentiment real, p_metadata jsonb, p_window_hours double precision,
    p_category text, p_priority text, p_sla_due timestamptz, p_ticket_subject text, p_latency_ms integer
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    dup record;
    v_customer uuid;
    v_new_customer boolean;
    v_name text;
    v_dups jsonb := '[]'::jsonb;
    v_conflicts text[] := '{}';
    v_conv record;
    v_conv_id uuid;
    v_conv_new boolean := false;
    v_switched boolean := false;
    v_prev_channel text;
    v_ticket record;
    v_has_ticket boolean := false;
    v_ticket_new boolean := false;
    v_reopened boolean := false;
    v_new_status text;
    v_message uuid;
    v_unanswered bigint;
    owner_of jsonb := '{}'::jsonb;   -- "kind:value" -> owning customer (after merges)
    r record;
    k text;
    v text;
    o text;
BEGIN
    -- 1. dedup and 2. identity: lock the message key and the identities, then look both up.
    PERFORM pg_advisory_xact_lock(hashtextextended(lk, 0)) FROM unnest(p_lock_keys) WITH ORDINALITY AS u(lk, i) ORDER BY i;

    SELECT m.id AS message_id, m.sentiment, c.id AS customer_id, c.name, m.conversation_id,
           t.ticket_number, t.status, t.priority, t.category
      INTO dup
      FROM messages m JOIN customers c ON c.id = m.customer_id LEFT JOIN tickets t ON t.id = m.ticket_id
     WHERE m.channel = p_channel AND m.channel_message_id = p_cmid;
    IF FOUND THEN
        RETURN jsonb_build_object('duplicate', true, 'message_id', dup.message_id, 'sentiment', coalesce(dup.sentiment, 0),
            'customer_id', dup.customer_id, 'name', dup.name, 'conversation_id', dup.conversation_id,
            'ticket_number', dup.ticket_number, 'status', dup.status, 'priority', dup.priority, 'category', dup.category);
    END IF;

    FOR r IN SELECT i.kind, i.value, coalesce(c.merged_into, i.customer_id) AS owner
               FROM customer_identifiers i JOIN customers c ON c.id = i.customer_id
              WHERE i.value = ANY(p_values) LOOP
        owner_of := owner_of || jsonb_build_object(r.kind || ':' || r.value, r.owner);
    END LOOP;

    -- The identity of the message's own channel first, then email, then phone numbers; a number
    -- known under the other kind (phone / whatsapp) is the same person.
    FOR k, v IN SELECT u.k, u.v FROM unnest(p_kinds, p_values) WITH ORDINALITY AS u(k, v, i)
                 ORDER BY (u.k = p_channel) DESC, (u.k = 'email') DESC, u.i LOOP
        o := owner_of ->> (k || ':' || v);
        IF o IS NULL AND k IN ('phone', 'whatsapp') THEN
            o := owner_of ->> ((CASE WHEN k = 'phone' THEN 'whatsapp' ELSE 'phone' END) || ':' || v);
        END IF;
        IF o IS NOT NULL THEN
            v_customer := o::uuid;
            EXIT;
        END IF;
    END LOOP;

    v_new_customer := v_customer IS NULL;
    IF v_new_customer THEN
        INSERT INTO customers (name, first_contact_at) VALUES (p_name, p_received) RETURNING id INTO v_customer;
        IF p_name IS NOT NULL THEN
            -- A known person writing from a new channel becomes a new record: say who it may be.
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'customer_id', d.id, 'duplicate_of', d.duplicate_of, 'name', d.name, 'company', d.company,
                       'last_contact_at', d.last_contact_at, 'same_company', d.same_company)), '[]'::jsonb)
              INTO v_dups FROM crm_likely_duplicates(ARRAY[v_customer]) d;
        END IF;
        v_name := p_name;
    ELSE
        SELECT c.name INTO v_name FROM customer_identifiers i JOIN customers c ON c.id = i.customer_id
         WHERE i.value = ANY(p_values) AND i.customer_id = v_customer LIMIT 1;
        v_name := coalesce(v_name, p_name);
    END IF;

    -- Link the identities nobody owns (the channel vouches for the address it delivered from);
    -- report the ones another customer owns.
    SELECT coalesce(array_agg(u.k || ':' || u.v ORDER BY u.i), '{}') INTO v_conflicts
      FROM unnest(p_kinds, p_values) WITH ORDINALITY AS u(k, v, i)
     WHERE (owner_of ->> (u.k || ':' || u.v))::uuid <> v_customer;
    INSERT INTO customer_identifiers (customer_id, kind, value, verified, source_channel)
    SELECT v_customer, u.k, u.v, (u.k = 'email' AND p_channel = 'email') OR (u.k = 'whatsapp' AND p_channel = 'whatsapp'), p_channel
      FROM unnest(p_kinds, p_values) WITH ORDINALITY AS u(k, v, i)
     WHERE NOT owner_of ? (u.k || ':' || u.v)
     ORDER BY u.i;

    -- 3. conversation: the open one is reused within the window, while it has an unfinished
    -- ticket, or for a threaded reply (its thread id, or a message id it quotes).
    IF NOT v_new_customer THEN
        SELECT cv.id, cv.current_channel, cv.last_activity_at,
               EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_id = cv.id
                       AND t.status IN ('open', 'in_progress', 'waiting', 'escalated')) AS has_open_ticket,
               (cv.thread_ref IS NOT NULL AND cv.thread_ref = p_thread_ref)
               OR EXISTS (SELECT 1 FROM messages m WHERE m.channel = p_channel
                          AND m.channel_message_id = ANY(coalesce(p_in_reply_to, '{}'))
                          AND m.conversation_id = cv.id) AS threaded
          INTO v_conv
          FROM conversations cv WHERE cv.customer_id = v_customer AND cv.status <> 'closed' FOR UPDATE;
        IF FOUND AND NOT (v_conv.last_activity_at >= p_received - make_interval(secs => p_window_hours * 3600)
                          OR v_conv.has_open_ticket OR v_conv.threaded) THEN
            UPDATE conversations SET status = 'closed', ended_at = now(), resolution_type = coalesce(resolution_type, 'resolved')
             WHERE id = v_conv.id;
        ELSIF FOUND THEN
            v_conv_id := v_conv.id;
        END IF;
    END IF;
    IF v_conv_id IS NULL THEN
        INSERT INTO conversations (customer_id, initial_channel, current_channel, thread_ref, started_at, last_activity_at)
        VALUES (v_customer, p_channel, p_channel, p_thread_ref, p_received, p_received) RETURNING id INTO v_conv_id;
        INSERT INTO agent_metrics (metric_type, channel, value) VALUES ('conversation_count', p_channel, 1);
        v_conv_new := true;
    ELSIF v_conv.current_channel <> p_channel THEN
        v_switched := true;
        v_prev_channel := v_conv.current_channel;
        UPDATE conversations SET current_channel = p_channel,
               channel_switches = channel_switches || jsonb_build_array(jsonb_build_object('from', v_prev_channel, 'to', p_channel, 'at', p_received_iso))
         WHERE id = v_conv_id;
    END IF;

    -- 4. ticket before response: the conversation's latest ticket (a waiting one moves to
    -- in_progress, a resolved one reopens), or a new one. The ticket counter row is taken here,
    -- as late as the foreign key from messages allows, so it is held as briefly as possible.
    IF v_conv_new THEN
        SELECT NULL::text AS status INTO v_ticket;  -- assigned, so the tests below can read it
    ELSE
        SELECT * INTO v_ticket FROM tickets WHERE conversation_id = v_conv_id ORDER BY created_at DESC LIMIT 1 FOR UPDATE;
        v_has_ticket := FOUND;
    END IF;
    IF v_has_ticket AND v_ticket.status IN ('waiting', 'resolved') THEN
        v_reopened := v_ticket.status = 'resolved';
        v_new_status := CASE WHEN v_reopened THEN 'open' ELSE 'in_progress' END;
        INSERT INTO ticket_events (ticket_id, kind, from_value, to_value, note, actor)
        VALUES (v_ticket.id, 'status', v_ticket.status, v_new_status,
                CASE WHEN v_reopened THEN 'reopened by customer reply' ELSE 'customer replied' END, 'ingest_message');
        UPDATE tickets SET status = v_new_status, resolved_at = CASE WHEN v_new_status = 'open' THEN NULL ELSE resolved_at END
         WHERE id = v_ticket.id RETURNING * INTO v_ticket;
    ELSIF NOT v_has_ticket OR v_ticket.status = 'closed' THEN
        INSERT INTO tickets (customer_id, conversation_id, subject, category, priority, source_channel, sla_due_at, created_at)
        VALUES (v_customer, v_conv_id, p_ticket_subject, p_category, p_priority, p_channel, p_sla_due, p_received)
        RETURNING * INTO v_ticket;
        INSERT INTO ticket_events (ticket_id, kind, to_value, actor) VALUES (v_ticket.id, 'created', 'open', 'ingest_message');
        INSERT INTO agent_metrics (metric_type, channel, value, ticket_id) VALUES ('ticket_opened', p_channel, 1, v_ticket.id);
        v_ticket_new := true;
    END IF;

    -- 5 and 6. the message, sentiment folded into conversation and customer, counts and metrics.
    SELECT coalesce(sum(m.sentiment), 0) AS s, count(m.sentiment) AS n,
           count(*) FILTER (WHERE m.created_at > coalesce(
               (SELECT max(o2.created_at) FROM messages o2 WHERE o2.conversation_id = v_conv_id AND o2.direction = 'outbound'
                  AND o2.role IN ('agent', 'human')), '-infinity')) AS unanswered
      INTO r FROM messages m WHERE m.conversation_id = v_conv_id AND m.direction = 'inbound';
    v_unanswered := r.unanswered + 1;
    PERFORM set_config('crm.wake_after_commit', 'on', true);  -- the caller notifies after commit
    INSERT INTO messages (conversation_id, customer_id, ticket_id, channel, direction, role, content, subject,
                          channel_message_id, thread_ref, sentiment, processing_latency_ms, metadata, created_at)
    VALUES (v_conv_id, v_customer, v_ticket.id, p_channel, 'inbound', 'customer', p_content, p_subject, p_cmid, p_thread_ref,
            p_sentiment, p_latency_ms + (extract(epoch FROM clock_timestamp() - t0) * 1000)::integer, p_metadata, p_received)
    RETURNING id INTO v_message;
    UPDATE conversations SET message_count = message_count + 1,
           sentiment = (r.s + p_sentiment) / (r.n + 1),
           last_activity_at = greatest(last_activity_at, p_received), thread_ref = coalesce(thread_ref, p_thread_ref)
     WHERE id = v_conv_id;
    INSERT INTO customer_sentiment (customer_id, message_id, channel, score, recorded_at)
    VALUES (v_customer, v_message, p_channel, p_sentiment, p_received);
    UPDATE customers SET total_interactions = total_interactions + 1,
           sentiment_avg = ((coalesce(sentiment_avg, 0) * total_interactions) + p_sentiment) / (total_interactions + 1),
           last_contact_at = greatest(coalesce(last_contact_at, p_received), p_received),
           first_contact_at = least(coalesce(first_contact_at, p_received), p_received),
           name = coalesce(name, p_name)
     WHERE id = v_customer;
    INSERT INTO agent_metrics (metric_type, channel, value, message_id)
    VALUES ('message_volume', p_channel, 1, v_message), ('sentiment', p_channel, p_sentiment, v_message);

    RETURN jsonb_build_object(
        'duplicate', false, 'message_id', v_message, 'customer_id', v_customer, 'name', v_name,
        'customer_is_new', v_new_customer, 'likely_duplicates', v_dups, 'identity_conflicts', to_jsonb(v_conflicts),
        'conversation_id', v_conv_id, 'conversation_is_new', v_conv_new, 'channel_switched', v_switched,
        'previous_channel', v_prev_channel, 'ticket_number', v_ticket.ticket_number, 'status', v_ticket.status,
        'priority', v_ticket.priority, 'category', v_ticket.category, 'ticket_is_new', v_ticket_new,
        'reopened', v_reopened, 'unanswered', v_unanswered);
END
$$;

-- The agent's wake-up, moved out of the intake transaction. A transaction that NOTIFYs takes a
-- database-wide lock at commit and holds it through the WAL flush, so with the trigger of 0006
-- every ingest committed one at a time: unrelated customers queued behind each other's fsync.
-- crm_ingest marks its transaction, the trigger skips it, and tools/intake.py wakes listeners
-- right after the commit with crm_wake_inbound(): a transaction of its own whose commit does
-- not wait for the flush (it writes nothing but the notification; losing one in a crash only
-- delays a waiting claim_inbound until its next poll). Every other writer of customer messages
-- still notifies through the trigger.
DROP TRIGGER messages_inbound_customer ON messages;
CREATE TRIGGER messages_inbound_customer AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.direction = 'inbound' AND NEW.role = 'customer'
                       AND current_setting('crm.wake_after_commit', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION crm_inbound_notify();

CREATE FUNCTION crm_wake_inbound() RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    SELECT pg_notify('crm_inbound', '');
$$;

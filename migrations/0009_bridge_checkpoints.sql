-- 0009_bridge_checkpoints: where a channel bridge has got to in its channel (an IMAP mailbox's
-- UIDVALIDITY and last UID, a Gmail historyId), kept in the CRM so a restarted bridge, on any host,
-- fetches nothing twice. One small JSON value per (bridge, key); `version` counts writes, and a
-- write names the version it read (compare-and-set), so two bridge processes on one mailbox cannot
-- move a checkpoint backwards.

CREATE TABLE bridge_checkpoints (
    bridge      text NOT NULL CHECK (length(bridge) BETWEEN 1 AND 200),
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    value       jsonb NOT NULL CHECK (length(value::text) <= 4096),
    version     integer NOT NULL CHECK (version >= 1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bridge, key)
);

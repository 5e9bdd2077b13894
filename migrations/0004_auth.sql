-- 0004_auth: API tokens for the HTTP transport and an append-only audit log of writes.
-- Only the SHA-256 of a token is stored: a database dump or backup does not hand out access.

CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('admin', 'staff', 'agent', 'bridge', 'readonly')),
    token_sha256  bytea NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,            -- token name, JWT subject, or 'stdio'
    role         text NOT NULL,
    tool         text NOT NULL,
    ids          jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {"ticket_number": ["TKT-0001"], ...}
    args_sha256  text NOT NULL,            -- digest of the canonical JSON arguments, never the arguments
    outcome      text NOT NULL             -- 'ok' or 'error:<kind>'
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);

-- Append-only: history that can be edited is not an audit trail. TRUNCATE is left to the owner
-- (retention), row-level changes are refused for everyone.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

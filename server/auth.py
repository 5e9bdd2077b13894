"""Bearer tokens for the HTTP transport: our own opaque API tokens, and optionally JWT access
tokens from an external OAuth 2.1 / OIDC issuer.

Opaque tokens are `crm_` + 256 random bits (url-safe base64). Only their SHA-256 is stored; the
verifier looks the hash up on every request (one indexed query, no cache), so `token revoke`
takes effect on the next request without a restart.

Both verifiers implement the SDK's TokenVerifier protocol and return an AccessToken whose
client_id names the caller (token name or JWT subject) and whose scopes carry the role as
`crm:<role>` (see roles.role_from_scopes)."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import asyncpg
from mcp.server.auth.provider import AccessToken

from .roles import ROLES, Role, role_from_scopes, scope_for

log = logging.getLogger(__name__)

TOKEN_PREFIX = "crm_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TokenStoreUnavailable(Exception):
    """Tokens cannot be checked (token table or the issuer's JWKS unreachable): answered 503
    (retry), not 401 (your token is bad)."""


class TokenAdminError(Exception):
    """A token administration mistake (bad name or role, duplicate, unknown): one line, exit 2."""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)  # 32 bytes = 256 bits of entropy


async def create_token(conn: asyncpg.Connection, name: str, role: str) -> str:
    """Store a new token's hash; return the token (the only time it exists in the clear)."""
    if not _NAME.match(name):
        raise TokenAdminError("token name must be 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    if role not in ROLES:
        raise TokenAdminError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    token = new_token()
    try:
        await conn.execute("INSERT INTO api_tokens (name, role, token_sha256) VALUES ($1, $2, $3)",
                           name, role, hash_token(token))
    except asyncpg.UniqueViolationError:
        raise TokenAdminError(f"a token named {name!r} already exists (revoked tokens keep their name)") from None
    return token


async def list_tokens(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT name, role, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY created_at, name")
    return [dict(r) for r in rows]


async def revoke_token(conn: asyncpg.Connection, name: str) -> datetime:
    revoked = await conn.fetchval(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1 RETURNING revoked_at", name)
    if revoked is None:
        raise TokenAdminError(f"no token named {name!r} (see `crm-mcp token list`)")
    return revoked


# One round trip: find the live token and, at most once a minute, note that it was used.
_VERIFY = """
WITH t AS (SELECT id, name, role FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL),
     touched AS (UPDATE api_tokens a SET last_used_at = now() FROM t
                 WHERE a.id = t.id AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '60 seconds')
                 RETURNING a.id)
SELECT name, role, (SELECT count(*) FROM touched) AS touched FROM t"""


@dataclass
class ApiTokenVerifier:
    """Opaque `crm_...` tokens, looked up by hash in api_tokens on every request."""

    pool: asyncpg.Pool
    resource: str

    async def verify_token(self, token: str) -> AccessToken | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        try:
            with anyio.fail_after(5):
                row = await self.pool.fetchrow(_VERIFY, hash_token(token))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            # InternalClientError: a pooled connection the server terminated mid-use (seen in tests).
            # Fail closed, but do not tell a client with a good token that it is bad:
            # http_ops.TokenStoreDown turns this into 503 + Retry-After.
            log.warning("token check failed: database unavailable (%s)", type(exc).__name__)
            raise TokenStoreUnavailable(type(exc).__name__) from None
        if row is None:
            return None
        return AccessToken(token=token, client_id=row["name"], subject=row["name"],
                           scopes=[scope_for(row["role"])], resource=self.resource, claims={"kind": "api_token"})


@dataclass
class JwtVerifier:
    """JWT access tokens from an external issuer: signature via its JWKS, issuer, audience (this
    server's resource URL unless configured), expiry; scopes crm:<role> map to roles. The token is
    only verified, never forwarded anywhere (no passthrough)."""

    issuer: str
    jwks_url: str
    audience: str
    resource: str  # this server's resource URL; the audience check above is what binds the token to it
    leeway_s: int = 10
    algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")

    def __post_init__(self) -> None:
        import jwt

        # Keys are cached for 5 minutes; an unknown `kid` refetches (key rotation).
        self._jwks = jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def _decode(self, token: str) -> dict[str, Any]:
        import jwt

        key = self._jwks.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=list(self.algorithms), audience=self.audience,
                          issuer=self.issuer, leeway=self.leeway_s,
                          options={"require": ["exp", "iss", "aud"]})

    async def verify_token(self, token: str) -> AccessToken | None:
        import jwt

        try:
            claims = await anyio.to_thread.run_sync(self._decode, token)
        except jwt.PyJWKClientConnectionError as exc:  # the issuer's JWKS is unreachable: retry, not "bad token"
            log.warning("JWT not checked: JWKS unreachable (%s)", type(exc).__name__)
            raise TokenStoreUnavailable("JWKS unreachable") from None
        except jwt.PyJWKClientError as exc:
            log.info("JWT rejected: no matching signing key (%s)", type(exc).__name__)
            return None
        except jwt.InvalidTokenError as exc:
            log.info("JWT rejected: %s", type(exc).__name__)  # the class names the failed check; no claims logged
            return None
        scope = claims.get("scope", "")
        scopes = scope.split() if isinstance(scope, str) else []
        if isinstance(claims.get("scp"), list):
            scopes += [s for s in claims["scp"] if isinstance(s, str)]
        role = role_from_scopes(scopes)
        if role is None:
            log.info("JWT rejected: no crm:<role> scope")
            return None
        subject = str(claims.get("sub") or claims.get("client_id") or claims.get("azp") or "jwt")
        return AccessToken(token=token, client_id=str(claims.get("client_id") or claims.get("azp") or subject),
                           subject=subject, scopes=[scope_for(role)], expires_at=int(claims["exp"]),
                           resource=self.resource, claims={"kind": "jwt", "iss": self.issuer})


@dataclass
class CombinedVerifier:
    """Our tokens by prefix; anything shaped like a JWT goes to the issuer's verifier if configured."""

    api: ApiTokenVerifier
    jwt: JwtVerifier | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        if token.startswith(TOKEN_PREFIX):
            return await self.api.verify_token(token)
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify_token(token)
        return None


def principal_of(access: AccessToken) -> tuple[str, Role | None]:
    """(actor name for logs and audit, role) of a verified token."""
    return access.subject or access.client_id, role_from_scopes(access.scopes)

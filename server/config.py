"""One settings object for every process of ours: env vars prefixed CRM_, overridden by CLI flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import phonenumbers
from platformdirs import user_data_path
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return user_data_path("crm-mcp", appauthor=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="External PostgreSQL 16+ with pgvector (postgresql://...). Unset: the embedded server.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded PostgreSQL cluster lives (and persists between runs).",
    )
    default_region: str = Field(
        default="US", description="ISO 3166 region for phone numbers written without a country code."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    read_only: bool = Field(default=False, description="Hide every tool that writes. Wins over toolsets.")
    toolsets: str = Field(default="all", description="Comma-separated toolsets to expose, or 'all'.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    pool_min_size: int = Field(default=1, ge=0, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=200)
    statement_timeout_ms: int = Field(default=15000, ge=100)
    conversation_window_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    escalation_sentiment_threshold: float = Field(default=-0.6, ge=-1, le=1)
    repeat_question_limit: int = Field(default=3, ge=2, le=50)
    sla_hours_critical: float = Field(default=1.0, gt=0)
    sla_hours_high: float = Field(default=4.0, gt=0)
    sla_hours_medium: float = Field(default=24.0, gt=0)
    sla_hours_low: float = Field(default=72.0, gt=0)
    sla_check_interval_s: float = Field(default=60.0, gt=0)
    embeddings: Literal["local", "openai"] = "local"
    embedding_model: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    # Access control (server/auth.py, server/roles.py, server/guard.py)
    role: Literal["admin", "staff", "agent", "bridge", "readonly"] = Field(
        default="admin", description="Role of unauthenticated transports: stdio, and HTTP under --no-auth.")
    no_auth: bool = Field(default=False, description="HTTP without bearer tokens; loopback only, for development.")
    public_url: str | None = Field(
        default=None, description="This server's MCP endpoint as clients reach it (the OAuth resource URL); "
        "default http://HOST:PORT/mcp. Its host is also added to the allowed Host/Origin headers.")
    oauth_issuer: str | None = Field(default=None, description="Accept JWT access tokens from this issuer.")
    oauth_jwks_url: str | None = Field(default=None, description="The issuer's JWKS URL (required with oauth_issuer).")
    oauth_audience: str | None = Field(default=None, description="Required JWT audience; default: the resource URL.")
    # HTTP service limits (server/http_ops.py)
    max_sessions: int = Field(default=200, ge=1, le=100000)
    max_sessions_per_token: int = Field(default=10, ge=1, le=10000)
    session_idle_minutes: float = Field(default=10.0, gt=0, le=24 * 60)
    http_read_timeout_s: float = Field(default=10.0, gt=0, le=300, description="A request, head and body, must arrive within this.")
    http_keep_alive_s: int = Field(default=5, ge=1, le=300)
    http_max_connections: int = Field(default=1000, ge=1)
    metrics_require_token: bool = Field(default=True, description="/metrics needs a bearer token when auth is on.")
    log_format: Literal["text", "json"] = "text"
    # Commerce (tools/commerce.py): an action whose amount is above its type's threshold waits for a
    # person; a negative threshold means always. Refunds the agent role asks for always wait.
    approval_thresholds: dict[str, float] = Field(
        default={}, description='JSON overriding the per-type defaults (50 for each type), e.g. {"refund": 20, "cancellation": -1}.')

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is not None and v.strip() == "":
            return None
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (for example postgresql://user:pass@127.0.0.1:5432/crm)")
        return v

    @field_validator("default_region")
    @classmethod
    def _check_region(cls, v: str) -> str:
        v = v.upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("must be a two-letter region code such as US, GB, DE or IN")
        return v

    @field_validator("toolsets")
    @classmethod
    def _check_toolsets(cls, v: str) -> str:
        from crm_mcp.tools.plumbing.registry import TOOLSETS

        parts = [part.strip().lower() for part in v.split(",") if part.strip()]
        if not parts:
            return "all"
        if "all" in parts:  # opt-in toolsets (store, store_sync) may be added to all
            parts = ["all", *(p for p in parts if p != "all")]
        unknown = [p for p in parts if p not in TOOLSETS and p != "all"]
        if unknown:
            raise ValueError(
                f"has unknown toolset(s) {', '.join(unknown)}; valid: all, or a comma-separated list of {', '.join(TOOLSETS)}.")
        return ",".join(dict.fromkeys(parts))

    @field_validator("oauth_jwks_url", "oauth_issuer", "public_url")
    @classmethod
    def _check_http_url(cls, v: str | None) -> str | None:
        if v is not None and v.strip() == "":
            return None
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def resource_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/mcp"

    def sla_hours(self, priority: str) -> float:
        return float(getattr(self, f"sla_hours_{priority}"))

    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class ConfigError(Exception):
    """Bad configuration: printed as one line at start, exit code 2."""


def load_settings(**overrides: object) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        env = f"CRM_{field.upper()}"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid configuration: {env} {msg}") from None

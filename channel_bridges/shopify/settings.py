"""SHOPIFY_* settings, read by the bridge itself (bridges import nothing from the server)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ShopifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPIFY_", extra="ignore", frozen=True)

    shop_domain: str | None = Field(default=None, description="your-store.myshopify.com")
    access_token: str | None = Field(default=None, description="Admin API access token of the custom app (shpat_...).")
    webhook_secret: str | None = Field(default=None, description="The app's client secret: webhooks are signed with it.")
    api_version: str = Field(default="2025-07", pattern=r"^\d{4}-\d{2}$|^unstable$")
    api_base: str | None = Field(default=None, description="Instead of https://SHOP_DOMAIN (tests: a local stand-in).")

    def graphql_url(self) -> str:
        base = (self.api_base or f"https://{self.shop_domain}").rstrip("/")
        return f"{base}/admin/api/{self.api_version}/graphql.json"


class ShopifyConfigError(Exception):
    """A missing or invalid SHOPIFY_* setting: one line, exit code 2."""


def load(*, need: tuple[str, ...], env: Mapping[str, str] | None = None) -> ShopifySettings:
    """The settings from the process environment, or from env when given (`crm-mcp up` checks
    the environment it will start the bridge with)."""
    try:
        s = ShopifySettings() if env is None else ShopifySettings(
            **{k.removeprefix("SHOPIFY_").lower(): v for k, v in env.items() if k.startswith("SHOPIFY_")})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ShopifyConfigError(f"SHOPIFY_{str(err['loc'][0]).upper()} {err['msg']}") from None
    missing = [f"SHOPIFY_{n.upper()}" for n in need if not getattr(s, n)]
    if "access_token" in need and not (s.shop_domain or s.api_base):
        missing.append("SHOPIFY_SHOP_DOMAIN")
    if missing:
        raise ShopifyConfigError(f"set {', '.join(missing)} (the custom app's settings in Shopify admin > Apps > Develop apps); "
                                 "see the README's store section.")
    return s

"""`crm-mcp shopify sync`: every order from the Admin GraphQL API into the CRM, page by page.

After each page is committed (upsert_order for each order) the page's end cursor is written to a
checkpoint file, atomically; a run that stops (Ctrl-C, Shopify or the CRM unreachable for too long)
resumes after the last committed page. A finished run marks the checkpoint complete, and the next
run starts over: orders already stored come back as 'stale' and change nothing."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from platformdirs import user_data_path
from tqdm import tqdm

from ..connection import CrmConnection, CrmRejected, CrmTarget, CrmUnavailable
from ..logs import event
from ..retry import Backoff
from .admin import AdminApi
from .mapping import from_graphql
from .settings import ShopifySettings

log = logging.getLogger("crm_mcp.bridge.shopify")


def default_checkpoint(settings: ShopifySettings) -> Path:
    shop = (settings.shop_domain or "shop").replace("/", "_")
    return user_data_path("crm-mcp", appauthor=False) / f"shopify-sync-{shop}.json"


@dataclass
class Checkpoint:
    path: Path
    cursor: str | None = None
    done: int = 0
    complete: bool = False

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, data.get("cursor"), int(data.get("done", 0)), bool(data.get("complete")))
        except FileNotFoundError:
            return cls(path)
        except (ValueError, TypeError, AttributeError):
            event(log, "checkpoint_unreadable", logging.WARNING, path=str(path))
            return cls(path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cursor": self.cursor, "done": self.done, "complete": self.complete}), encoding="utf-8")
        os.replace(tmp, self.path)  # a crash leaves the old checkpoint or the new one, never half of one


async def _upsert(crm: CrmConnection, args: dict[str, Any], backoff: Backoff, patience_s: float) -> str:
    """upsert_order, retried while the CRM is unavailable (up to patience_s)."""
    waited = 0.0
    attempt = 0
    while True:
        try:
            return str((await crm.call("upsert_order", **args))["outcome"])
        except CrmUnavailable:
            delay = backoff.delay(attempt)
            if waited + delay > patience_s:
                raise
            attempt += 1
            waited += delay
            await anyio.sleep(delay)


async def run_sync(target: CrmTarget, settings: ShopifySettings, *, checkpoint: Path, restart: bool = False,
                   progress: bool | None = None, page_size: int = 50, patience_s: float = 120.0,
                   max_pages: int | None = None) -> dict[str, Any]:
    """Returns counts per outcome (created, updated, stale, rejected), pages, and whether it finished."""
    state = Checkpoint(checkpoint) if restart else Checkpoint.load(checkpoint)
    if state.complete:
        state = Checkpoint(checkpoint)
    counts: Counter[str] = Counter()
    pages = 0
    show = sys.stderr.isatty() if progress is None else progress
    async with CrmConnection(target) as crm, AdminApi(settings, page_size=page_size) as api:
        if not await crm.wait_connected(60):
            raise CrmUnavailable(f"no connection to the CRM ({crm.last_error or 'connecting'})")
        total = await api.count() if show else None
        with tqdm(total=total, initial=state.done, unit="order", desc="shopify sync", disable=not show, file=sys.stderr) as bar:
            async for nodes, end, more in api.order_pages(state.cursor):
                for node in nodes:
                    try:
                        counts[await _upsert(crm, from_graphql(node), Backoff(), patience_s)] += 1
                    except (CrmRejected, KeyError, ValueError) as exc:  # one bad order does not stop the backfill
                        counts["rejected"] += 1
                        event(log, "order_rejected", logging.WARNING, order=node.get("id"), error=str(exc)[:300])
                state.cursor, state.done, state.complete = end, state.done + len(nodes), not more
                state.save()
                pages += 1
                bar.update(len(nodes))
                if not show:
                    event(log, "sync_page", page=pages, orders=state.done, throttle_wait_s=round(api.throttle.waited_s, 2))
                if max_pages is not None and pages >= max_pages and more:
                    break
    return {"pages": pages, "orders_seen": state.done, "complete": state.complete, **dict(counts),
            "throttle_wait_s": round(api.throttle.waited_s, 3), "checkpoint": str(checkpoint)}


def main(*, server: str | None, token: str | None, checkpoint: str | None, restart: bool, page_size: int,
         max_pages: int | None, log_level: str) -> None:
    from ..logs import configure
    from .settings import ShopifyConfigError, load

    configure(log_level)
    try:
        settings = load(need=("access_token",))
    except ShopifyConfigError as exc:
        print(f"crm-mcp: shopify sync: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    path = Path(checkpoint) if checkpoint else default_checkpoint(settings)
    from .admin import ShopifyError

    try:
        result = anyio.run(lambda: run_sync(CrmTarget.from_env(server, token), settings, checkpoint=path, restart=restart,
                                            page_size=page_size, max_pages=max_pages))
    except (ShopifyError, CrmUnavailable) as exc:
        print(f"crm-mcp: shopify sync stopped: {exc} (progress is kept in {path}; run it again to resume)", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(result))

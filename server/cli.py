"""The `crm-mcp` command. CLI flags override CRM_* environment variables."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from . import __version__
from .config import ConfigError, Settings, load_settings
from .admin_cli import add_admin_parsers
from .roles import ROLES

if TYPE_CHECKING:
    from crm_mcp.tools.knowledge import SearchKbInput


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="external PostgreSQL URL (env CRM_DATABASE_URL); default: embedded server")
    p.add_argument("--data-dir", help="embedded database directory (env CRM_DATA_DIR)")
    p.add_argument("--default-region", help="region for phone numbers without country code, e.g. US (env CRM_DEFAULT_REGION)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="env CRM_LOG_LEVEL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-mcp",
        description="crm-mcp: a support CRM as an MCP server (PostgreSQL + pgvector).",
    )
    parser.add_argument("--version", action="version", version=f"crm-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default, --http for Streamable HTTP)")
    _common(serve)
    serve.add_argument("--http", action="store_true", help="serve Streamable HTTP at http://HOST:PORT/mcp")
    serve.add_argument("--host", help="HTTP bind address (loopback only; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000)")
    serve.add_argument("--demo", action="store_true", help="load the demo data set before serving")
    serve.add_argument("--read-only", action="store_true", default=None, help="expose only tools that do not write")
    serve.add_argument("--toolsets", help="comma-separated toolsets to expose (default all)")
    serve.add_argument("--role", choices=ROLES, help="role of stdio (and of HTTP under --no-auth); default admin (env CRM_ROLE)")
    serve.add_argument("--no-auth", action="store_true", default=None,
                       help="HTTP without bearer tokens: local development on loopback only (env CRM_NO_AUTH)")
    serve.add_argument("--public-url", help="the MCP URL clients use; required to bind a non-loopback address (env CRM_PUBLIC_URL)")

    add_admin_parsers(sub, _common)  # token create/list/revoke, audit (server/admin_cli.py)

    up = sub.add_parser("up", help="run the whole desk: MCP HTTP server, web form, agent and configured bridges, supervised (Ctrl-C stops all)")
    _common(up)
    up.add_argument("--demo", action="store_true", help="load the demo data set first")
    up.add_argument("--host", help="address every component binds (loopback; default 127.0.0.1)")
    up.add_argument("--port", type=int, help="MCP HTTP port (default 8000)")
    up.add_argument("--webform-port", type=int, default=8080, help="web form port (default 8080)")
    up.add_argument("--whatsapp-port", type=int, default=8090,
                    help="WhatsApp bridge port, started when TWILIO_* or META_* settings are present (default 8090)")
    up.add_argument("--email-port", type=int, default=8025,
                    help="email bridge port, started when CRM_SUPPORT_ADDRESS is set (default 8025)")
    up.add_argument("--shopify-port", type=int, default=8092,
                    help="Shopify webhook bridge port, started when SHOPIFY_* settings are present (default 8092)")

    mig = sub.add_parser("migrate", help="apply pending database migrations")
    _common(mig)

    seed = sub.add_parser("seed-demo", help="load the demo data set (customers, conversations, tickets, knowledge base)")
    _common(seed)

    demo = sub.add_parser("demo", help="the demo data set")
    demosub = demo.add_subparsers(dest="demo_command", required=True)
    reset = demosub.add_parser("reset", help="delete all data and load the demo again, with fresh times and SLA deadlines")
    _common(reset)
    reset.add_argument("--force", action="store_true", help="also delete data that is not the demo's")

    kb = sub.add_parser("kb", help="knowledge base: import Markdown, reindex embeddings, search")
    kbsub = kb.add_subparsers(dest="kb_command", required=True)
    imp = kbsub.add_parser("import", help="import a folder of Markdown and plain text articles (idempotent by path and content hash)")
    _common(imp)
    imp.add_argument("path", help="folder of .md and .txt files; the first '# ' heading (else the file name) is the title, "
                     "the folder (or front matter) the category; what could not be followed is reported")
    rei = kbsub.add_parser("reindex", help="re-embed every article and product with the configured embedder (resumable)")
    _common(rei)
    srch = kbsub.add_parser("search", help="search the knowledge base from the terminal")
    _common(srch)
    srch.add_argument("query")
    srch.add_argument("--limit", type=int, default=5)
    srch.add_argument("--category")

    bridge = sub.add_parser("bridge", help="run a channel bridge (an MCP client of this CRM)")
    bridgesub = bridge.add_subparsers(dest="bridge_command", required=True)
    wf = bridgesub.add_parser("webform", help="the support web form and its status pages")
    _bridge_args(wf, 8080, "HTTP port of the form (default 8080)")
    wf.add_argument("--refresh", type=int, default=10, help="seconds between status page refreshes (default 10)")
    _whatsapp_parser(bridgesub)
    _email_bridge_parser(bridgesub)

    _store_parsers(sub, bridgesub)

    agent = sub.add_parser("agent", help="run the offline answering agent (an MCP client of this CRM, role agent)")
    agent.add_argument("--server", help="CRM MCP endpoint, e.g. http://127.0.0.1:8000/mcp (env CRM_SERVER_URL); "
                       "default: start `crm-mcp serve --role agent` over stdio on the local data directory")
    agent.add_argument("--token", help="bearer token with the agent role (env CRM_TOKEN)")
    agent.add_argument("--lease-s", type=float, default=120.0, help="seconds a claimed conversation is held (default 120)")
    agent.add_argument("--wait-s", type=float, default=20.0, help="long-poll seconds per claim (default 20)")
    agent.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="env CRM_LOG_LEVEL")
    agent.add_argument("--llm", choices=["offline", "openai"], help="offline: knowledge base only; openai: any OpenAI-compatible endpoint "
                       "(OPENAI_BASE_URL, OPENAI_API_KEY). Default: openai when a model is set (--model, CRM_AGENT_MODEL)")
    agent.add_argument("--model", help="model name for --llm openai (env CRM_AGENT_MODEL)")
    agent.add_argument("--turn-delay-s", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: kill mid-turn

    db = sub.add_parser("db", help="database utilities")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    st = dbsub.add_parser("status", help="where the data is, schema versions and row counts")
    _common(st)
    stop = dbsub.add_parser("stop", help="stop the embedded PostgreSQL server")
    _common(stop)
    return parser


# `bridge whatsapp` settings: each has a flag named after its variable (TWILIO_API_BASE: --twilio-api-base).
WHATSAPP_SETTINGS = {
    "TWILIO_ACCOUNT_SID": "Twilio account SID (AC...)", "TWILIO_AUTH_TOKEN": "Twilio auth token (prefer the env variable)",
    "TWILIO_WHATSAPP_NUMBER": "the business WhatsApp number on Twilio, E.164", "TWILIO_API_BASE": "default https://api.twilio.com",
    "TWILIO_TEMPLATE_CONTENT_SID": "approved Content template (HX...) sent outside the 24-hour window",
    "META_APP_SECRET": "Meta app secret (prefer the env variable)", "META_VERIFY_TOKEN": "the verify token set in the Meta app",
    "META_ACCESS_TOKEN": "Cloud API access token (prefer the env variable)", "META_PHONE_NUMBER_ID": "the sending phone number id",
    "META_GRAPH_BASE": "default https://graph.facebook.com", "META_GRAPH_VERSION": "Graph API version, default v21.0",
    "META_TEMPLATE_NAME": "approved template sent outside the 24-hour window", "META_TEMPLATE_LANGUAGE": "its language, default en_US",
    "WHATSAPP_TEMPLATE_PARAMS": 'template body parameters as a JSON list; {ticket_number} and {text} are filled in (default ["{ticket_number}"])',
}


def _bridge_args(p: argparse.ArgumentParser, port: int, port_help: str) -> None:
    """Where a channel bridge listens and how it reaches the CRM: the same four options for each."""
    p.add_argument("--port", type=int, default=port, help=port_help)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--server", help="CRM MCP endpoint, e.g. http://127.0.0.1:8000/mcp (env CRM_SERVER_URL); "
                   "default: start `crm-mcp serve` over stdio on the local data directory")
    p.add_argument("--token", help="bearer token with the bridge role (env CRM_TOKEN)")


def _whatsapp_parser(bridgesub: Any) -> None:
    wa = bridgesub.add_parser("whatsapp", help="WhatsApp through Twilio and/or the Meta Cloud API (webhooks and replies)")
    _bridge_args(wa, 8090, "HTTP port of the webhooks (default 8090)")
    wa.add_argument("--public-url", dest="wa_public_url", metavar="URL",
                    help="this bridge's external base URL, which signatures are computed over (env CRM_PUBLIC_URL; default http://HOST:PORT)")
    wa.add_argument("--lease-s", type=float, default=60.0, help="seconds a claimed reply is held before another claim may send it (default 60)")
    for name, text in WHATSAPP_SETTINGS.items():
        wa.add_argument("--" + name.lower().replace("_", "-"), dest=f"wa_{name}", metavar="VALUE", help=f"{text} (env {name})")


def _bridge_whatsapp(ns: argparse.Namespace, settings: Settings) -> None:
    import os

    from crm_mcp.channel_bridges.whatsapp import config
    from crm_mcp.channel_bridges.whatsapp.serve import main as whatsapp

    env = dict(os.environ) | {k: v for k in WHATSAPP_SETTINGS if (v := getattr(ns, f"wa_{k}")) is not None}
    try:
        cfg = config.load(env, public_url=ns.wa_public_url, default_public_url=f"http://{ns.host}:{ns.port}")
    except config.ConfigError as exc:
        _usage_error(f"bridge whatsapp: {exc}")
    whatsapp(settings=cfg, port=ns.port, host=ns.host, server=ns.server, token=ns.token, lease_s=ns.lease_s,
             log_level=settings.log_level)


def _email_bridge_parser(bridgesub: Any) -> None:
    em = bridgesub.add_parser(
        "email", help="one support mailbox over IMAP/SMTP or the Gmail API",
        description="Settings come from the environment: CRM_SUPPORT_ADDRESS, then CRM_IMAP_* and CRM_SMTP_* "
                    "(IMAP/SMTP) or GMAIL_* (Gmail API); see README 'Email bridge'.")
    em.add_argument("--backend", choices=["imap", "gmail"], help="env CRM_EMAIL_BACKEND (default: imap unless only Gmail is configured)")
    _bridge_args(em, 8025, "HTTP port for /healthz and the Gmail push endpoint (default 8025)")
    em.add_argument("--wait-s", type=float, default=20.0, help=argparse.SUPPRESS)  # long-poll seconds per outbox claim


def _bridge_email(ns: argparse.Namespace, settings: Settings) -> None:
    from crm_mcp.channel_bridges.email.serve import EmailConfigError, main as email_bridge

    try:
        email_bridge(port=ns.port, host=ns.host, server=ns.server, token=ns.token, backend=ns.backend,
                     log_level=settings.log_level, wait_s=ns.wait_s)
    except EmailConfigError as exc:
        _usage_error(f"bridge email: {exc}")


def _store_parsers(sub: Any, bridgesub: Any) -> None:
    """Issue 18: the Shopify bridge, its backfill, and the daily analytics roll-up."""
    sh = bridgesub.add_parser("shopify", help="Shopify order webhooks at POST /shopify/webhooks (SHOPIFY_* settings)")
    sh.add_argument("--port", type=int, default=8092, help="HTTP port (default 8092)")
    sh.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sh.add_argument("--server", help="CRM MCP endpoint (env CRM_SERVER_URL); the server must enable toolset store_sync")
    sh.add_argument("--token", help="bearer token with the bridge role (env CRM_TOKEN)")
    sh.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="env CRM_LOG_LEVEL")

    shop = sub.add_parser("shopify", help="Shopify store: backfill orders")
    shopsub = shop.add_subparsers(dest="shopify_command", required=True)
    sync = shopsub.add_parser("sync", help="copy every order from the Admin GraphQL API (resumable; progress bar)")
    sync.add_argument("--server", help="CRM MCP endpoint (env CRM_SERVER_URL); default: `crm-mcp serve` over stdio "
                      "with toolset store_sync on the local data directory")
    sync.add_argument("--token", help="bearer token with the bridge role (env CRM_TOKEN)")
    sync.add_argument("--checkpoint", help="checkpoint file (default: in the crm-mcp data directory, per shop)")
    sync.add_argument("--restart", action="store_true", help="ignore the checkpoint and start from the first order")
    sync.add_argument("--page-size", type=int, default=50, choices=range(1, 251), metavar="1-250",
                      help="orders per Admin API query (default 50)")
    sync.add_argument("--max-pages", type=int, help=argparse.SUPPRESS)  # tests: stop mid-way, then resume
    sync.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="env CRM_LOG_LEVEL")

    an = sub.add_parser("analytics", help="the daily analytics roll-up (analytics_daily)")
    ansub = an.add_subparsers(dest="analytics_command", required=True)
    back = ansub.add_parser("backfill", help="(re)compute daily figures from --since up to yesterday (idempotent)")
    _common(back)
    back.add_argument("--since", required=True, type=_date, help="first day, YYYY-MM-DD (UTC)")


def _date(value: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD, e.g. 2026-01-31") from None


def _store(settings: Settings, ns: argparse.Namespace) -> None:
    import os

    if ns.command == "bridge":
        from crm_mcp.channel_bridges.shopify.webhooks import main as shopify_bridge

        shopify_bridge(port=ns.port, host=ns.host, server=ns.server, token=ns.token, log_level=settings.log_level)
    elif ns.command == "shopify":
        from crm_mcp.channel_bridges.shopify.sync import main as shopify_sync

        if not (ns.server or os.environ.get("CRM_SERVER_URL")):
            # the stdio server this starts must publish upsert_order and act as the bridge role
            os.environ["CRM_TOOLSETS"] = "store_sync"
            os.environ["CRM_ROLE"] = "bridge"
        shopify_sync(server=ns.server, token=ns.token, checkpoint=ns.checkpoint, restart=ns.restart,
                     page_size=ns.page_size, max_pages=ns.max_pages, log_level=settings.log_level)
    else:
        from .app import open_crm

        async def backfill() -> None:
            from crm_mcp.tools import analytics

            async with open_crm(settings, background=False) as crm:
                result = await analytics.backfill(crm, ns.since)
            print(json.dumps(result, default=str))

        anyio.run(backfill)


def _settings(ns: argparse.Namespace) -> Settings:
    keys = ("database_url", "data_dir", "default_region", "log_level", "host", "port", "read_only", "toolsets",
            "role", "no_auth", "public_url")
    return load_settings(**{k: getattr(ns, k, None) for k in keys})


def _usage_error(message: str) -> NoReturn:
    print(f"crm-mcp: {message}", file=sys.stderr)
    raise SystemExit(2)


def _search_input(ns: argparse.Namespace) -> SearchKbInput:
    """The `kb search` arguments, validated by the tool's own input model before anything starts."""
    from pydantic import ValidationError

    from crm_mcp.tools.knowledge import SearchKbInput
    from crm_mcp.tools.vocabulary import KB_CATEGORIES

    try:
        return SearchKbInput(query=ns.query, limit=ns.limit, category=ns.category)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
    if field == "category":
        _usage_error(f"kb search: --category {ns.category!r} is not a knowledge base category; valid: {', '.join(KB_CATEGORIES)}.")
    if field == "limit":
        bounds = SearchKbInput.model_json_schema()["properties"]["limit"]
        _usage_error(f"kb search: --limit must be between {bounds['minimum']} and {bounds['maximum']} (got {ns.limit}).")
    _usage_error("kb search: the query must be 1-2000 characters, e.g. crm-mcp kb search \"refund annual plan\".")


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    search = _search_input(ns) if ns.command == "kb" and ns.kb_command == "search" else None
    try:
        settings = _settings(ns)
    except ConfigError as exc:
        _usage_error(str(exc))

    if ns.command == "serve" and ns.demo and settings.read_only:
        print("crm-mcp: --demo loads data and cannot be combined with --read-only; run `crm-mcp seed-demo` "
              "first, then serve with --read-only", file=sys.stderr)
        raise SystemExit(2)
    from .app import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        if ns.command == "serve":
            from .app import serve_http, serve_stdio

            if ns.http:
                anyio.run(serve_http, settings, ns.demo)
            else:
                anyio.run(serve_stdio, settings, ns.demo)
        elif ns.command == "up":
            from .up import run_up

            anyio.run(functools.partial(run_up, settings, demo=ns.demo, webform_port=ns.webform_port,
                                        bridge_ports={"whatsapp": ns.whatsapp_port, "email": ns.email_port,
                                                      "shopify": ns.shopify_port}))
        elif ns.command == "bridge" and ns.bridge_command == "whatsapp":
            _bridge_whatsapp(ns, settings)
        elif ns.command == "bridge" and ns.bridge_command == "email":
            _bridge_email(ns, settings)
        elif ns.command in ("shopify", "analytics") or (ns.command == "bridge" and ns.bridge_command == "shopify"):
            _store(settings, ns)
        elif ns.command == "bridge":
            from crm_mcp.channel_bridges.webform.serve import main as webform

            webform(port=ns.port, host=ns.host, server=ns.server, token=ns.token, refresh_s=ns.refresh,
                    log_level=settings.log_level)
        elif ns.command == "agent":
            from crm_mcp.channel_bridges.agent import main as agent

            agent(server=ns.server, token=ns.token, lease_s=ns.lease_s, wait_s=ns.wait_s,
                  turn_delay_s=ns.turn_delay_s, log_level=settings.log_level, llm=ns.llm, model=ns.model)
        elif ns.command == "migrate":
            anyio.run(_migrate, settings)
        elif ns.command == "seed-demo":
            anyio.run(_seed, settings)
        elif ns.command == "demo":
            anyio.run(_demo_reset, settings, ns.force)
        elif ns.command == "kb":
            anyio.run(_kb, settings, ns, search)
        elif ns.command in ("token", "audit"):
            from .admin_cli import run_admin

            anyio.run(run_admin, settings, ns)
        elif ns.command == "db" and ns.db_command == "status":
            anyio.run(_status, settings)
        elif ns.command == "db" and ns.db_command == "stop":
            from .db import embedded_pgdata, stop_embedded

            stop_embedded(embedded_pgdata(settings))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as caught:  # one clear line, not a traceback, for operational failures
        exc: BaseException = caught
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # raised inside a task group (open_crm runs one)
        from crm_mcp.tools.engines.embeddings import EmbeddingConfigError, EmbeddingProviderError
        from crm_mcp.tools.knowledge import EmbeddingSpaceMismatch

        from .db import DatabaseUnavailable
        from .demo import DemoResetRefused
        from .migrate import MigrationError

        from .auth import TokenAdminError
        from .http_ops import HttpConfigError

        operational = (DatabaseUnavailable, MigrationError, EmbeddingSpaceMismatch, EmbeddingConfigError, EmbeddingProviderError,
                       DemoResetRefused)
        if isinstance(exc, operational):
            print(f"crm-mcp: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        if isinstance(exc, (TokenAdminError, HttpConfigError)):  # the user's mistake: one line, exit 2
            print(f"crm-mcp: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


async def _migrate(settings: Settings) -> None:
    from .app import prepare_database
    from .db import connect_once
    from .migrate import status

    dsn = await prepare_database(settings.model_copy(update={"read_only": False}))  # migrating is the one write asked for
    conn = await connect_once(dsn)
    try:
        rows = await status(conn)
    finally:
        await conn.close()
    print(f"schema up to date: {len(rows)} migrations applied")


async def _seed(settings: Settings) -> None:
    from .app import open_crm
    from .demo import load_demo

    async with open_crm(settings) as crm:
        summary = await load_demo(crm)
    print(json.dumps(summary, indent=2))


async def _demo_reset(settings: Settings, force: bool) -> None:
    from .app import open_crm
    from .demo import reset_demo

    async with open_crm(settings, background=False) as crm:
        summary = await reset_demo(crm, force=force)
    print(json.dumps(summary, indent=2))


async def _kb(settings: Settings, ns: argparse.Namespace, search: SearchKbInput | None) -> None:
    from pathlib import Path

    from crm_mcp.tools import knowledge

    from .app import open_crm

    if ns.kb_command == "import" and not Path(ns.path).is_dir():
        raise SystemExit(f"crm-mcp: {ns.path} is not a folder")
    # reindex must be able to start while the stored vectors belong to another embedder
    async with open_crm(settings, check_embeddings=ns.kb_command != "reindex", background=False) as crm:
        if ns.kb_command == "import":
            tty = sys.stderr.isatty()

            def warn(message: str) -> None:
                # on a terminal, clear the progress bar's line first
                print(("\r\x1b[K" if tty else "") + f"crm-mcp: warning: {message}", file=sys.stderr)

            counts = await knowledge.import_folder(crm, Path(ns.path), progress=tty, warn=warn)
            print(json.dumps(counts))
        elif ns.kb_command == "reindex":
            print(json.dumps(await knowledge.reindex(crm, progress=sys.stderr.isatty())))
        else:
            assert search is not None  # validated in main before the database was opened
            res = await knowledge.search_knowledge_base(crm, search)
            for i, r in enumerate(res.results, 1):
                sim = "-" if r.similarity is None else f"{r.similarity:.2f}"
                print(f"{i}. [{r.relevance}] {r.title}  ({r.category}; similarity {sim}; {'+'.join(r.matched_by)})")
                print(f"   {r.snippet[:160]}")
            if res.nothing_relevant:
                print("Nothing relevant found.")


async def _status(settings: Settings) -> None:
    from .app import prepare_database
    from .db import connect_once, embedded_pgdata
    from .migrate import status

    dsn = await prepare_database(settings)
    conn = await connect_once(dsn)
    try:
        out: dict[str, Any] = {
            "database": "external (CRM_DATABASE_URL)" if settings.database_url else f"embedded at {embedded_pgdata(settings)}",
            "server_version": await conn.fetchval("SHOW server_version"),
            "pgvector": await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
            "migrations": await status(conn),
            "counts": {},
        }
        for table in ("customers", "customer_identifiers", "conversations", "messages", "tickets", "knowledge_base",
                      "kb_chunks", "products", "orders", "feedback"):
            out["counts"][table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
        space = await conn.fetchrow("SELECT provider, model, dimension FROM embedding_space")
        out["embeddings"] = dict(space) if space else None
    finally:
        await conn.close()
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

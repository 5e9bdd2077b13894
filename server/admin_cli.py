"""`crm-mcp token ...` and `crm-mcp audit`: administration on the database host, no server needed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .config import Settings
from .roles import ROLES


def add_admin_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    tok = sub.add_parser("token", help="API tokens for the HTTP transport: create, list, revoke")
    toksub = tok.add_subparsers(dest="token_command", required=True)
    tc = toksub.add_parser("create", help="create a token; it is printed once, alone on the last line")
    common(tc)
    tc.add_argument("--role", dest="token_role", required=True, choices=ROLES)
    tc.add_argument("--name", dest="token_name", required=True, help="unique name, e.g. desk-alice or bridge-email")
    tl = toksub.add_parser("list", help="names, roles, created, last used, revoked (never the tokens)")
    common(tl)
    tl.add_argument("--json", action="store_true")
    tr = toksub.add_parser("revoke", help="revoke a token by name; effective on its next request")
    common(tr)
    tr.add_argument("token_name", metavar="NAME")

    aud = sub.add_parser("audit", help="print the audit log of writes, newest first")
    common(aud)
    aud.add_argument("--limit", type=int, default=50)
    aud.add_argument("--json", action="store_true")


def _fmt(v: Any) -> str:
    return "-" if v is None else v.strftime("%Y-%m-%d %H:%M:%S") if hasattr(v, "strftime") else str(v)


async def run_admin(settings: Settings, ns: argparse.Namespace) -> None:
    from . import audit, auth
    from .app import prepare_database
    from .db import connect_once

    dsn = await prepare_database(settings)
    conn = await connect_once(dsn)
    try:
        if ns.command == "audit":
            rows = await audit.recent(conn, max(1, min(ns.limit, 10000)))
            if ns.json:
                print(json.dumps(rows, indent=2, default=str))
                return
            for r in rows:
                ids = " ".join(f"{k}={','.join(v)}" for k, v in r["ids"].items()) or "-"
                print(f"{r['at'][:19]}  {r['actor']} ({r['role']})  {r['tool']}  {r['outcome']}  {ids}  args:{r['args_sha256'][:12]}")
            if not rows:
                print("audit log is empty", file=sys.stderr)
        elif ns.token_command == "create":
            token = await auth.create_token(conn, ns.token_name, ns.token_role)
            print(f"created token {ns.token_name!r} with role {ns.token_role}. It is shown once; store it now:",
                  file=sys.stderr)
            print(token)  # alone on the last line of stdout
        elif ns.token_command == "list":
            rows = await auth.list_tokens(conn)
            if ns.json:
                print(json.dumps(rows, indent=2, default=str))
                return
            print(f"{'NAME':<24} {'ROLE':<9} {'CREATED':<19}  {'LAST USED':<19}  REVOKED")
            for r in rows:
                print(f"{r['name']:<24} {r['role']:<9} {_fmt(r['created_at']):<19}  {_fmt(r['last_used_at']):<19}  {_fmt(r['revoked_at'])}")
        elif ns.token_command == "revoke":
            when = await auth.revoke_token(conn, ns.token_name)
            print(f"revoked {ns.token_name!r} at {_fmt(when)} UTC; its next request is refused")
    finally:
        await conn.close()

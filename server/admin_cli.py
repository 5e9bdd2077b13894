"""`crm-mcp token ...` and `crm-mcp audit`: administration on the database host, no server needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import audit, auth
from .config import Settings


def _fmt(v: Any) -> str:
    return "-" if v is None else v.strftime("%Y-%m-%d %H:%M:%S") if hasattr(v, "strftime") else str(v)


async def run_admin(settings: Settings, ns: argparse.Namespace) -> None:
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

#!/usr/bin/env bash
# MCP Inspector CLI against `crm-mcp serve` over stdio, with a throwaway data dir:
#   1. tools/list --strict: fails on any tool-schema portability finding (warning or error);
#   2. tools/call find_customer on the demo data.
#
#   scripts/inspector.sh
# Installs Node 22 and the Inspector under .tools/ (git-ignored). Exit 1 on any finding or failure.
# Env: CRM_MCP (path to crm-mcp), TOOLS_DIR, INSPECTOR_VERSION.
set -euo pipefail
. "$(dirname "$0")/_tools.sh"

INSPECTOR_VERSION="${INSPECTOR_VERSION:-2.12.0}"

ensure_node22
INSP_PREFIX="$(ensure_npm_tool inspector @modelcontextprotocol/inspector "$INSPECTOR_VERSION")"
INSPECTOR="$INSP_PREFIX/node_modules/.bin/mcp-inspector"
CRM="$(find_crm_mcp)"

DATA_DIR="$(make_data_dir)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/crm-inspector.XXXXXX")"
cleanup() { cleanup_data_dir "$CRM" "$DATA_DIR"; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# The Inspector keeps a server catalog (default ~/.mcp-inspector); keep it out of $HOME.
export MCP_CATALOG_PATH="$WORK/catalog.json"

inspect() {  # inspector --cli args...; the server command comes last, after `--`
  "$INSPECTOR" --cli -e CRM_DATA_DIR="$DATA_DIR" -e CRM_LOG_LEVEL=WARNING "$@" -- "$CRM" serve
}

log "seeding demo data into $DATA_DIR"
CRM_DATA_DIR="$DATA_DIR" CRM_LOG_LEVEL=WARNING "$CRM" seed-demo >/dev/null

fail=0
strict=(--strict)
if ! "$INSPECTOR" --cli --help 2>/dev/null | grep -q -- '--strict'; then
  log "this Inspector has no --strict; relying on its one-line portability summary"
  strict=()
fi

log "tools/list ${strict[*]}"
rc=0; inspect "${strict[@]}" --method tools/list >"$WORK/list.json" 2>"$WORK/list.err" || rc=$?
ntools="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tools"]))' "$WORK/list.json" 2>/dev/null || echo 0)"
if [[ -s "$WORK/list.err" ]]; then
  echo "--- inspector stderr (tools/list) ---"; cat "$WORK/list.err"; echo "---"
fi
if (( rc != 0 )) || (( ntools == 0 )) || grep -qiE 'warning|error|portability' "$WORK/list.err"; then
  echo "FAIL  tools/list: exit $rc, $ntools tools, schema findings above"; fail=1
else
  echo "PASS  tools/list: $ntools tools, no schema portability findings"
fi

log "tools/call find_customer"
rc=0; inspect --method tools/call --tool-name find_customer --tool-arg query=maya.lindqvist@nordvik.example \
  >"$WORK/call.json" 2>"$WORK/call.err" || rc=$?
found="$(python3 - "$WORK/call.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    print(""); sys.exit()
sc = r.get("structuredContent") or {}
names = [m.get("name") for m in sc.get("matches", [])] if isinstance(sc, dict) else []
print(",".join(n for n in names if n) if not r.get("isError") else "")
EOF
)"
if (( rc != 0 )) || [[ "$found" != *"Maya Lindqvist"* ]]; then
  echo "FAIL  tools/call find_customer: exit $rc, matches: ${found:-none}"; cat "$WORK/call.err"; head -c 2000 "$WORK/call.json"; echo; fail=1
else
  echo "PASS  tools/call find_customer: matched $found"
fi

exit "$fail"

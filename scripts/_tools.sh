# Shared by scripts/conformance.sh and scripts/inspector.sh (sourced, not run).
#
# Installs a private Node 22 and pinned npm tools under $TOOLS_DIR (default: <repo>/.tools,
# which must stay git-ignored), finds the crm-mcp executable, picks a free loopback port,
# and starts/stops crm-mcp with a throwaway data directory. Needs: npm (any Node), python3, curl.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
NODE22_VERSION="${NODE22_VERSION:-22.23.3}"
# Keep npm's download cache inside .tools too, so nothing is written to ~/.npm.
export npm_config_cache="${npm_config_cache:-$TOOLS_DIR/npm-cache}"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

_installed_version() {  # <prefix> <package>
  local pj="$1/node_modules/$2/package.json"
  [[ -f "$pj" ]] && python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$pj"
}

# Puts a Node 22 first on PATH (the npm package node-linux-<arch> ships the official binary).
ensure_node22() {
  command -v npm >/dev/null || die "npm is needed to install Node 22 locally"
  local arch pkg prefix="$TOOLS_DIR/node22"
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no node-linux package for $(uname -m)" ;;
  esac
  pkg="node-linux-$arch"
  if [[ "$(_installed_version "$prefix" "$pkg")" != "$NODE22_VERSION" ]]; then
    log "installing $pkg@$NODE22_VERSION into $prefix"
    npm install --silent --prefix "$prefix" "$pkg@$NODE22_VERSION" >&2 || die "npm install $pkg failed"
  fi
  export PATH="$prefix/node_modules/$pkg/bin:$PATH"
  [[ "$(node --version)" == "v$NODE22_VERSION" ]] || die "node on PATH is $(node --version), expected v$NODE22_VERSION"
}

# ensure_npm_tool <dir-name> <package> <version>: installs package@version into $TOOLS_DIR/<dir-name>
# (with Node 22 on PATH) unless that exact version is already there; echoes the prefix.
ensure_npm_tool() {
  local prefix="$TOOLS_DIR/$1" pkg="$2" version="$3"
  if [[ "$(_installed_version "$prefix" "$pkg")" != "$version" ]]; then
    log "installing $pkg@$version into $prefix"
    npm install --silent --prefix "$prefix" "$pkg@$version" >&2 || die "npm install $pkg@$version failed"
  fi
  echo "$prefix"
}

find_crm_mcp() {
  if [[ -n "${CRM_MCP:-}" ]]; then echo "$CRM_MCP"
  elif command -v crm-mcp >/dev/null; then command -v crm-mcp
  elif [[ -x "$ROOT/.venv/bin/crm-mcp" ]]; then echo "$ROOT/.venv/bin/crm-mcp"
  elif [[ -x "$ROOT/venv/bin/crm-mcp" ]]; then echo "$ROOT/venv/bin/crm-mcp"
  else die "crm-mcp not found: activate the project's venv or set CRM_MCP=/path/to/crm-mcp"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Throwaway data dir for the embedded PostgreSQL; removed by cleanup_data_dir.
make_data_dir() { mktemp -d "${TMPDIR:-/tmp}/crm-mcp-check.XXXXXX"; }

cleanup_data_dir() {  # <crm-mcp> <data-dir>
  [[ -n "${2:-}" && -d "$2" ]] || return 0
  # The embedded server stops with its last client; this only matters after a crash.
  "$1" db stop --data-dir "$2" >/dev/null 2>&1 || true
  rm -rf "$2"
}

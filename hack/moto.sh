#!/usr/bin/env bash
# The EC2/SSM simulator: installs a pinned moto[server] into a per-user venv keyed
# by version (linked as .cache/moto-venv), and with `start` runs it on a free
# loopback port, printing the endpoint URL.
#
#   hack/moto.sh install          # idempotent; seconds when already installed
#   hack/moto.sh start [PORT]     # foreground; PORT defaults to a free one
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${HOSTFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hostforge}"
venv="$cache_root/moto-v$MOTO_VERSION"
link="$root/.cache/moto-venv"

step() { printf '[moto] %s\n' "$*" >&2; }

install() {
  if [[ ! -f "$venv/.complete" ]]; then
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || { step "FAILED: $py is not on PATH"; exit 1; }
    mkdir -p "$cache_root/logs"
    local log="$cache_root/logs/moto-install.log"
    step "creating venv and installing moto[server]==$MOTO_VERSION ..."
    rm -rf "$venv"
    if ! { "$py" -m venv "$venv" &&
      "$venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"; } >"$log" 2>&1; then
      step "FAILED: installing moto (log: $log)"
      tail -n 30 "$log" >&2
      rm -rf "$venv"
      exit 1
    fi
    touch "$venv/.complete"
  fi
  mkdir -p "$root/.cache"
  ln -sfn "$venv" "$link"
  step "moto $MOTO_VERSION ready in $link"
}

start() {
  install
  local port="${1:-}"
  if [[ -z "$port" ]]; then
    port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  fi
  step "listening on http://127.0.0.1:$port"
  exec "$venv/bin/python" "$here/moto_launcher.py" -H 127.0.0.1 -p "$port"
}

case "${1:-install}" in
  install) install ;;
  start) shift; start "$@" ;;
  *) step "usage: $0 install|start [PORT]"; exit 2 ;;
esac

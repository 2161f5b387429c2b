#!/usr/bin/env bash
# Install the peers' virtualenvs (trl 1.16, trl 1.12, trl 0.11.4 on transformers 4.46 and 5.23; CPU torch)
# by calling the lab's ../shared/bench-peers/setup_venvs.sh. Once; several GB; PyPI only.
#   bash bench/setup_peers.sh              # all four, under /tmp/peerbench-venvs (the shared script's root)
#   bash bench/setup_peers.sh trl011       # just one of: trl116 trl112 trl011 trl011tf5
#   PEER_VENVS=~/.cache/detoxrl/peer-venvs bash bench/setup_peers.sh   # another cache folder
# bench.compare finds venvs outside /tmp/peerbench-venvs through the same PEER_VENVS variable.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${DETOXRL_SHARED:-$HERE/../../shared}"
SCRIPT="$SHARED/bench-peers/setup_venvs.sh"
if [ ! -f "$SCRIPT" ]; then
  echo "No peer setup script at $SCRIPT (set DETOXRL_SHARED to the lab's shared folder);" \
       "nothing installed. Our own benchmark (python -m bench.throughput) does not need the peers." >&2
  exit 0
fi
ROOT="${PEER_VENVS:-/tmp/peerbench-venvs}"
if [ "$ROOT" = /tmp/peerbench-venvs ]; then
  bash "$SCRIPT" "$@"
else
  # The shared script hard-codes its root; run a copy of it with only that line changed.
  tmp="$(mktemp)"
  trap 'rm -f "$tmp"' EXIT
  sed "s#^ROOT=.*#ROOT=\"$ROOT\"#" "$SCRIPT" > "$tmp"
  bash "$tmp" "$@"
fi

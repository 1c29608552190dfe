#!/usr/bin/env bash
# Install tunnelacct and run its main job, the live service, on the embedded SQLite store. On a
# machine without a WireGuard tunnel it replays a capture recorded through a real one, through
# the same live pipeline, in a loop (examples/tunnelacct.toml). Stop it with Ctrl-C: open
# sessions are checkpointed, then org "acme" is exported as CSV.
#   QUICKSTART_SECONDS=N  stop by itself after N seconds
#   QUICKSTART_OUT=dir    where the database, status file and CSV go (default: out)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${QUICKSTART_OUT:-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export TUNNELACCT_CONFIG=examples/tunnelacct.toml
export TUNNELACCT_DATABASE_URL="sqlite:///$out/tunnelacct.db"
echo "serving: sessions go to $out/tunnelacct.db, status to $out/status.json; Ctrl-C stops"
serve=(.venv/bin/tunnelacct serve --status-file "$out/status.json")
if [ -n "${QUICKSTART_SECONDS:-}" ]; then
  timeout --foreground -s INT "$QUICKSTART_SECONDS" "${serve[@]}" || [ $? -eq 124 ]
else
  "${serve[@]}" || [ $? -eq 130 ]
fi
.venv/bin/tunnelacct export --org acme -o "$out/acme-sessions.csv"
echo
echo "first rows of $out/acme-sessions.csv:"
head -n 6 "$out/acme-sessions.csv" | cut -c1-200

#!/usr/bin/env bash
# Install tunnelacct and run its main job, the live service, on the embedded SQLite store. On a
# machine without a WireGuard tunnel it replays a capture recorded through a real one, through
# the same live pipeline, in a loop (scripts/quickstart.toml). The web UI and the API listen
# on 127.0.0.1:8080; the first run creates the UI user "admin" and prints its generated
# password once. Stop it with Ctrl-C: open sessions are checkpointed, then org "acme" is
# exported as CSV.
#   QUICKSTART_SECONDS=N  stop by itself after N seconds
#   QUICKSTART_OUT=dir    where the database, status file and CSV go (default: out)
#   TUNNELACCT_API_LISTEN=host:port  where the UI and API listen (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${QUICKSTART_OUT:-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export TUNNELACCT_CONFIG=scripts/quickstart.toml
export TUNNELACCT_DATABASE_URL="sqlite:///$out/tunnelacct.db"
.venv/bin/tunnelacct db upgrade >/dev/null
# The UI's user: made once with a generated password, printed now and never again. Only the
# scrypt hash is stored, and the UI listens on loopback only.
said="$out/user-create.log"
if password=$(.venv/bin/tunnelacct user create admin --role admin 2>"$said" </dev/null); then
  login="sign in as admin with password $password (shown once: store it now)"
elif grep -q "exists already" "$said"; then
  login="sign in as admin (its password was printed by the first quick start run; or make another: .venv/bin/tunnelacct user create NAME --role admin)"
else
  cat "$said" >&2
  exit 1
fi
rm -f "$said"
listen=${TUNNELACCT_API_LISTEN:-127.0.0.1:8080}
echo "web UI: http://$listen/ - $login"
echo "REST API: http://$listen/api/v1/ (tokens: .venv/bin/tunnelacct token create), OpenAPI at /docs"
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

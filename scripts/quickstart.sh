#!/usr/bin/env bash
# Install tunnelacct and run its main job on the embedded SQLite store: import a capture that
# was recorded through a real WireGuard tunnel, then export one organisation's sessions as CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TUNNELACCT_CONFIG=examples/tunnelacct.toml
mkdir -p out
export TUNNELACCT_DATABASE_URL=sqlite:///out/tunnelacct.db
.venv/bin/tunnelacct import tests/data/wg-small.pcap
.venv/bin/tunnelacct export --org acme -o out/acme-sessions.csv
echo
echo "first rows of out/acme-sessions.csv:"
head -n 6 out/acme-sessions.csv | cut -c1-200

#!/usr/bin/env bash
# Set up everything the tests need (system packages, .venv) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/setup.sh --test
.venv/bin/ruff check tunnelacct tests scripts
.venv/bin/ruff format --check tunnelacct tests scripts
.venv/bin/mypy
# Two workers, one per core, each taking whole test files (their module fixtures, such as a
# WireGuard or flow-exporter lab, are built once); most tests wait on real processes.
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile "$@"

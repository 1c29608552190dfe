#!/usr/bin/env bash
# Set up everything the tests need (system packages, .venv) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/setup.sh --test
.venv/bin/ruff check tunnelacct tests scripts
.venv/bin/ruff format --check tunnelacct tests scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"

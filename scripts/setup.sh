#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install tunnelacct into it; with --test, the test tools too.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

py=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 &&
     "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    py=$cand; break
  fi
done
[ -n "$py" ] || { echo "setup: Python 3.11 or newer is required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
# Installed already from this pyproject.toml, with these extras (or with the test ones, which
# include the rest): nothing to do. Reinstalling the editable package rewrites its files under
# .venv while other processes, such as the test suite's other worker, may be importing it.
stamp=".venv/.setup-stamp" # "<sha256 of pyproject.toml> <extras>"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
installed_digest=""
installed_extras=""
if [ -f "$stamp" ]; then
  read -r installed_digest installed_extras < "$stamp" || true
fi
if [ -x .venv/bin/tunnelacct ] && [ "$installed_digest" = "$digest" ] &&
   { [ -z "$extras" ] || [ "$installed_extras" = "$extras" ]; }; then
  echo "setup: tunnelacct $(.venv/bin/tunnelacct --version | awk '{print $NF}') is up to date in .venv"
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
echo "$digest ${extras:-[]}" > "$stamp"
echo "setup: tunnelacct $(.venv/bin/tunnelacct --version | awk '{print $NF}') installed in .venv"

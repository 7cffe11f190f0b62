#!/usr/bin/env bash
# The test command from the README: sets up .venv from requirements-dev.txt, then lints, type-checks
# and runs every test. Extra arguments go to pytest (e.g. `scripts/test.sh -k gateway`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || [ requirements-dev.txt -nt .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
  echo "test: installing Python dependencies into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements-dev.txt
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"

echo "test: ruff"
ruff check .
ruff format --check .
echo "test: pyright"
pyright
echo "test: pytest"
exec python -m pytest "$@"

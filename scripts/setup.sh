#!/usr/bin/env bash
# Create .venv with the pinned dependency set (requirements.lock, plus requirements-dev.lock: ruff and
# Dagster's dg CLI) and the project, once; later calls only reinstall when a lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Lucid needs Python 3.11, found %s" % sys.version.split()[0]'
stamp=.venv/.lucid-installed
want=$(cat requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then exit 0; fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q -r requirements.lock -r requirements-dev.lock
quiet .venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -m pip list 2>/dev/null | wc -l) packages)" >&2

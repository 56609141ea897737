# Shared set-up for scripts/run and scripts/test: create .venv when missing and install
# Craton into it (editable) with the extras named in CRATON_EXTRAS. Re-installs only when
# pyproject.toml changed since the last install. Needs nothing but Python 3.11+.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "craton: Python 3.11 or newer is required (found: $("$PY" --version 2>&1))" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=".venv/.craton-installed-${CRATON_EXTRAS:-none}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    if [ -n "${CRATON_EXTRAS:-}" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${CRATON_EXTRAS}]"
    else
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
    fi
    touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"

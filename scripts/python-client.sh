#!/usr/bin/env bash
# Lints, type-checks and tests the Python client (clients/python, the `oncely`
# package) against a real daemon.
#
# It creates (once) a virtualenv under ~/.cache/oncely with pinned pytest, mypy,
# ruff, httpx and hatchling (PyPI), installs ./clients/python into it, builds
# `oncelyd` (cargo build, debug), then runs `ruff check`, `ruff format --check`,
# `mypy --strict` and pytest. The tests start their own daemon on 127.0.0.1 (a port
# the OS picks) with a temporary data directory and kill it at the end.
#
#   scripts/python-client.sh                 # what `make test` runs
#   scripts/python-client.sh --no-build      # use the oncelyd already built
#   scripts/python-client.sh -k batching     # other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

# Bump VERSION when a pin changes: a new virtualenv is made beside the old one.
# (PYTHON_CLIENT_VENV overrides the place; not ONCELY_*, which oncelyd reads as its own
# settings and refuses when unknown.)
VERSION=1
PINS=(pytest==9.2.0 mypy==2.4.1 ruff==0.17.6 httpx==0.29.0 hatchling==1.33.0)
VENV="${PYTHON_CLIENT_VENV:-${HOME:-/root}/.cache/oncely/python-client-$VERSION}"
CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-target}"

build=1
if [ "${1:-}" = "--no-build" ]; then
    build=0
    shift
fi

if [ ! -x "$VENV/bin/pytest" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
    make_venv "$VENV"
    "$VENV/bin/pip" install --quiet "${PINS[@]}"
    echo "${PINS[*]}" >"$VENV/.pins"
fi

# The package as a user gets it (not editable), built with the pinned hatchling.
"$VENV/bin/pip" install --quiet --no-deps --force-reinstall --no-build-isolation ./clients/python

if [ "$build" -eq 1 ]; then
    "$CARGO" build --locked -q -p oncelyd --bin oncelyd
fi
case $TARGET in
    /*) ;;
    *) TARGET="$PWD/$TARGET" ;;
esac
export ONCELYD="$TARGET/debug/oncelyd"

cd clients/python
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy" --strict
"$VENV/bin/pytest" -q "$@"

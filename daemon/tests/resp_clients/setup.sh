#!/usr/bin/env bash
# Installs one Redis client library from its registry into a cache directory, once:
#
#   setup.sh redis-py VERSION   # PyPI `redis`, in a virtualenv; prints its python
#   setup.sh ioredis VERSION    # npm `ioredis`; prints its node_modules directory
#
# The install lives under ${ONCELY_CLIENTS_CACHE:-~/.cache/oncely}/<client>-<version>
# and is marked ready only once it is complete, so an interrupted install is redone
# and a finished one is reused (no registry is asked again). Concurrent runs wait
# for each other (flock). Run by daemon/tests/resp_clients.rs; by hand, to try a
# script: `NODE_PATH=$(setup.sh ioredis 5.4.1) node ioredis.js PORT`.
set -euo pipefail

client="${1:?usage: setup.sh redis-py|ioredis VERSION}"
version="${2:?usage: setup.sh redis-py|ioredis VERSION}"
cache="${ONCELY_CLIENTS_CACHE:-${HOME:-/root}/.cache/oncely}"
dir="$cache/$client-$version"
mkdir -p "$cache"

exec 9>"$cache/.$client-$version.lock"
flock 9

case "$client" in
redis-py)
    if [ ! -f "$dir/.ready" ]; then
        rm -rf "$dir"
        if ! python3 -m venv "$dir" >&2; then
            echo "error: python3 -m venv failed; install python3-venv" >&2
            exit 1
        fi
        if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
            "redis==$version" >&2; then
            echo "error: pip install redis==$version failed (is PyPI reachable?)" >&2
            exit 1
        fi
        "$dir/bin/python" -c "import redis; assert redis.__version__ == '$version', redis.__version__"
        touch "$dir/.ready"
    fi
    echo "$dir/bin/python"
    ;;
ioredis)
    if [ ! -f "$dir/.ready" ]; then
        for tool in node npm; do
            command -v "$tool" >/dev/null || {
                echo "error: $tool is not installed (apt-get install nodejs npm)" >&2
                exit 1
            }
        done
        rm -rf "$dir"
        mkdir -p "$dir"
        if ! npm install --silent --no-audit --no-fund --no-save --prefix "$dir" \
            "ioredis@$version" >&2; then
            echo "error: npm install ioredis@$version failed (is the npm registry reachable?)" >&2
            exit 1
        fi
        NODE_PATH="$dir/node_modules" node -e "
            const v = require('ioredis/package.json').version;
            if (v !== '$version') { console.error('ioredis ' + v + ', not $version'); process.exit(1); }"
        touch "$dir/.ready"
    fi
    echo "$dir/node_modules"
    ;;
*)
    echo "error: unknown client $client (redis-py or ioredis)" >&2
    exit 2
    ;;
esac

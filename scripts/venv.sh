# Sourced by the scripts that need a Python virtualenv (schemathesis.sh,
# python-client.sh): `make_venv DIR` creates one at DIR, installing python3-venv
# first (as root, with apt-get) where the interpreter lacks it.
make_venv() {
    local dir=$1
    if python3 -m venv "$dir" >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: cannot create a Python virtualenv; install python3-venv" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends python3-venv >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends python3-venv >/dev/null; }
    rm -rf "$dir"
    python3 -m venv "$dir"
}

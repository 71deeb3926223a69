#!/usr/bin/env bash
# Automatic failover of Oncely's PostgreSQL store, tried on this machine.
#
# Sets up pg_auto_failover (Debian's postgresql-15-auto-failover) on loopback in a
# temporary directory: a monitor and two PostgreSQL nodes, node1 the primary and
# node2 its synchronous standby, each run by its own `pg_autoctl run` keeper. Then
# library trackers (benches/src/bin/pg_failover_load.rs) mark under load through
# the URL naming both nodes with target_session_attrs=read-write, while this script
#
#   1. kills the primary's postgres with SIGKILL: its keeper restarts it (a crash
#      recovery in place); with the tuned timings below the monitor declares the
#      node unhealthy first and fails over to the standby anyway;
#   2. kills the whole of the primary with SIGKILL (keeper and postgres: the loss
#      of the machine): the monitor notices, and promotes the standby by itself;
#   3. starts the lost node's keeper again: it rejoins as the new primary's
#      standby (pg_auto_failover rewinds it with pg_rewind) and the formation is
#      synchronous again.
#
# The load then stops and reports, for each event, how long marking was
# unavailable, and checks that every acknowledged mark reads duplicate (lost: the
# target is 0) and that no ID was answered new twice. Everything is torn down at
# the end, however the script ends; it checks that no process of the run is left.
#
# By default the monitor's failure detection is tuned down from pg_auto_failover's
# defaults (a health check every 5 s, a node unhealthy after 20 s, 30 s for a lost
# primary to demote itself before the standby is promoted) to 1 s, 3 s and 5 s;
# the keepers' network_partition_timeout (after which a primary cut off from the
# monitor and its standby stops itself) goes from 20 s to 3 s, still below the
# demote timeout, so that a primary that is merely cut off has stopped before the
# standby is promoted. `--defaults` keeps pg_auto_failover's own timings. See
# docs/deployment.md for the figures of both.
#
# Usage: scripts/failover-demo.sh [--defaults]
#   As root, or as a user who may run PostgreSQL; about two minutes once built.
#   --defaults keeps pg_auto_failover's own timings (about a minute more).
# Environment: CARGO_TARGET_DIR, where the load generator is built (as cargo does).
set -euo pipefail
cd "$(dirname "$0")/.."

BINDIR=/usr/lib/postgresql/15/bin
TIMINGS=tuned
case "${1:-}" in
    "") ;;
    --defaults) TIMINGS=defaults ;;
    *) echo "usage: $0 [--defaults]" >&2; exit 2 ;;
esac
# Each wait below is bounded; the load stops by itself after this at the latest.
LOAD_MAX_SECS=240

# Debian's packages: PostgreSQL 15, and pg_auto_failover's extension for it (which
# brings pg_autoctl).
./scripts/ensure-deps.sh "$BINDIR/initdb=postgresql-15" pgrep=procps \
    pg_autoctl=postgresql-15-auto-failover \
    /usr/share/postgresql/15/extension/pgautofailover.control=postgresql-15-auto-failover

echo "building the load generator (pg_failover_load)..." >&2
cargo build --locked -q -p oncely-benches --bin pg_failover_load
LOAD="${CARGO_TARGET_DIR:-target}/debug/pg_failover_load"

DIR=$(mktemp -d /tmp/oncely-failover-XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$DIR"
    as_pg() { runuser -u postgres -- "$@"; }
    PGUSER_OS=postgres
else
    as_pg() { "$@"; }
    PGUSER_OS=$(id -un)
fi
mkdir -p "$DIR/sock"
[ "$(id -u)" -eq 0 ] && chown postgres: "$DIR/sock"

# pg_autoctl keeps its configuration and state under XDG directories: here, in the
# run's directory, never in the user's home.
export XDG_CONFIG_HOME="$DIR/config" XDG_DATA_HOME="$DIR/share" XDG_RUNTIME_DIR="$DIR/run"
export PATH="$BINDIR:$PATH" PG_CONFIG="$BINDIR/pg_config" PGCONNECT_TIMEOUT=2
LOAD_PID=

teardown() {
    local status=$?
    set +e
    # A run that failed still shows what the load saw (while the servers are up).
    stop_load
    # Each keeper was started as the leader of its own process group, with its
    # postgres and that postgres's backends inside it.
    for f in "$DIR"/*.pgid; do
        [ -e "$f" ] && kill -TERM -- "-$(cat "$f")" 2>/dev/null
    done
    local deadline=$((SECONDS + 20))
    while [ $SECONDS -lt $deadline ] && pgrep -f "$DIR/" >/dev/null; do sleep 0.2; done
    for f in "$DIR"/*.pgid; do
        [ -e "$f" ] && kill -KILL -- "-$(cat "$f")" 2>/dev/null
    done
    sleep 0.5
    # Anything of this run still alive (a backend that outlived its postmaster)
    # names the run's directory on its command line.
    for pid in $(pgrep -f "$DIR/"); do
        echo "teardown: killing leftover process $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)" >&2
        kill -KILL "$pid" 2>/dev/null
    done
    sleep 0.2
    if pgrep -f "$DIR/" >/dev/null; then
        echo "teardown: processes of the run are still alive:" >&2
        pgrep -af "$DIR/" >&2
        status=1
    else
        echo "teardown: no process of the run is left" >&2
    fi
    rm -rf "$DIR"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A port nobody listens on (the small window before the server binds it is the
# usual price).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

now_ms() { date +%s%3N; }
elapsed() { awk -v from="$1" -v to="$(now_ms)" 'BEGIN { printf "%.2f", (to - from) / 1000 }'; }

# Waits until "$@" succeeds, at most $1 seconds; fails the run otherwise.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "gave up after ${secs}s waiting for $what" >&2
            show_state >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

# Starts a keeper, `pg_autoctl run`, as the leader of a new process group whose id
# it leaves in $DIR/<name>.pgid.
start_keeper() {
    local name=$1
    as_pg setsid sh -c 'echo $$ > "$1"; exec pg_autoctl run --pgdata "$2"' \
        sh "$DIR/$name.pgid" "$DIR/$name" >>"$DIR/$name.log" 2>&1 </dev/null &
    wait_for 10 "$name's keeper" test -s "$DIR/$name.pgid"
}

MONITOR_PORT=$(free_port)
MONITOR="postgres://autoctl_node@127.0.0.1:$MONITOR_PORT/pg_auto_failover?sslmode=disable"
monitor_sql() {
    psql -h 127.0.0.1 -p "$MONITOR_PORT" -U autoctl_node -d pg_auto_failover -XAtq -c "$1"
}
# Node states as the monitor has them: "node1:primary/primary node2:secondary/secondary"
# (reported state / assigned state).
states() {
    monitor_sql "SELECT string_agg(nodename || ':' || reportedstate || '/' || goalstate, ' '
                 ORDER BY nodeid) FROM pgautofailover.node"
}
states_are() { [ "$(states)" = "$1" ]; }
show_state() { as_pg pg_autoctl show state --pgdata "$DIR/monitor"; }
# The primary's name once the formation has settled: one primary, one secondary.
settled_primary() {
    case "$(states)" in
        "node1:primary/primary node2:secondary/secondary") echo node1 ;;
        "node1:secondary/secondary node2:primary/primary") echo node2 ;;
        *) return 1 ;;
    esac
}
settled() { settled_primary >/dev/null; }
other() { if [ "$1" = node1 ]; then echo node2; else echo node1; fi; }
node_sql() {
    psql -h 127.0.0.1 -p "${PORT[$1]}" -U "$PGUSER_OS" -d oncely -XAtc "$2"
}
answers() { node_sql "$1" "SELECT 1"; }
promoted() { [ "$(node_sql "$1" 'SELECT pg_is_in_recovery()')" = f ]; }
# Assigned wait_primary and there: its writes no longer wait for the lost standby.
alone() { states | grep -q "$1:wait_primary/wait_primary"; }

# Stops the load (at once, or after LOAD_MAX_SECS at the latest) and shows its
# report; its exit status in LOAD_STATUS.
stop_load() {
    LOAD_STATUS=1
    [ -n "$LOAD_PID" ] || return 0
    touch "$DIR/stop"
    # A call can wait on a commit for as long as its server waits for a standby.
    local deadline=$((SECONDS + 90))
    while kill -0 "$LOAD_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$LOAD_PID" 2>/dev/null; then
        echo "the load did not stop within 90 s of being told to: killed" >&2
        kill -KILL "$LOAD_PID"
    fi
    wait "$LOAD_PID" && LOAD_STATUS=0 || LOAD_STATUS=$?
    LOAD_PID=
    echo "== the load's report"
    cat "$DIR/load.out"
    if [ -s "$DIR/load.err" ]; then
        echo "-- its standard error:"
        tail -20 "$DIR/load.err"
    fi
}

# A fresh PostgreSQL data directory for pg_autoctl to take over, set to listen on
# loopback only and to keep its sockets in the run's directory (pg_autoctl reaches
# it there through PGHOST, exported below; it would otherwise initdb with the
# defaults: every interface, sockets in /var/run/postgresql).
init_pgdata() {
    as_pg "$BINDIR/initdb" -D "$1" -U "$PGUSER_OS" -A trust -E UTF8 --no-sync --no-instructions >/dev/null
    printf "unix_socket_directories = '%s'\nlisten_addresses = '127.0.0.1'\n" "$DIR/sock" \
        | as_pg tee -a "$1/postgresql.conf" >/dev/null
}
export PGHOST="$DIR/sock"

echo "== pg_auto_failover $(pg_autoctl --version | head -1 | awk '{print $3}'), PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'), in $DIR"
init_pgdata "$DIR/monitor"
as_pg pg_autoctl create monitor --pgdata "$DIR/monitor" --pgport "$MONITOR_PORT" \
    --hostname 127.0.0.1 --auth trust --no-ssl >"$DIR/create-monitor.log" 2>&1
# The keeper starts postgres with -h from its configuration, which create set to *.
as_pg pg_autoctl config set --pgdata "$DIR/monitor" postgresql.listen_addresses 127.0.0.1 >/dev/null
start_keeper monitor
wait_for 60 "the monitor" monitor_sql "SELECT 1"
if [ "$TIMINGS" = tuned ]; then
    for setting in health_check_period=1000 health_check_timeout=1000 health_check_max_retries=1 \
        health_check_retry_delay=500 node_considered_unhealthy_timeout=3000 primary_demote_timeout=5000; do
        psql -h 127.0.0.1 -p "$MONITOR_PORT" -U "$PGUSER_OS" -d pg_auto_failover -XAtq \
            -c "ALTER SYSTEM SET pgautofailover.${setting%%=*} = ${setting#*=}"
    done
    psql -h 127.0.0.1 -p "$MONITOR_PORT" -U "$PGUSER_OS" -d pg_auto_failover -XAtq \
        -c "SELECT pg_reload_conf()" >/dev/null
fi
echo "the monitor's timings ($TIMINGS): $(monitor_sql "SELECT string_agg(replace(name, 'pgautofailover.', '') || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name ~ '^pgautofailover[.](health_check|node_considered|primary_demote)'")"

declare -A PORT
for n in node1 node2; do
    PORT[$n]=$(free_port)
    # node2 is copied from node1 by pg_basebackup, settings included.
    [ "$n" = node1 ] && init_pgdata "$DIR/$n"
    as_pg pg_autoctl create postgres --pgdata "$DIR/$n" --pgport "${PORT[$n]}" \
        --hostname 127.0.0.1 --listen 127.0.0.1 --name "$n" --dbname oncely \
        --auth trust --no-ssl --monitor "$MONITOR" >"$DIR/create-$n.log" 2>&1
    if [ "$TIMINGS" = tuned ]; then
        as_pg pg_autoctl config set --pgdata "$DIR/$n" timeout.network_partition_timeout 3 >/dev/null
    fi
    start_keeper "$n"
    if [ "$n" = node1 ]; then
        wait_for 60 "node1 as a single primary" states_are "node1:single/single"
    fi
done
wait_for 120 "node2 as a synchronous standby" \
    states_are "node1:primary/primary node2:secondary/secondary"
SYNC=$(psql -h 127.0.0.1 -p "${PORT[node1]}" -U "$PGUSER_OS" -d oncely -XAt \
    -c "SHOW synchronous_standby_names")
echo "node1 (port ${PORT[node1]}) is primary, node2 (port ${PORT[node2]}) its standby; synchronous_standby_names = $SYNC"
echo "the monitor's URI for the formation: $(as_pg pg_autoctl show uri --pgdata "$DIR/monitor" --formation default)"
show_state

URL="postgres://$PGUSER_OS@127.0.0.1:${PORT[node1]},127.0.0.1:${PORT[node2]}/oncely?target_session_attrs=read-write"
EVENTS="$DIR/events"
: >"$EVENTS"
echo "== marking through $URL"
"$LOAD" --url "$URL" --duration "${LOAD_MAX_SECS}s" --stop-file "$DIR/stop" \
    --events "$EVENTS" >"$DIR/load.out" 2>"$DIR/load.err" &
LOAD_PID=$!
sleep 5

P=$(settled_primary)
echo "== 1. SIGKILL of $P's postgres, the primary's (its keeper restarts it, and the monitor may fail over meanwhile)"
PID=$(head -1 "$DIR/$P/postmaster.pid")
T=$(now_ms)
kill -KILL "$PID"
echo "$T $P's postgres killed" >>"$EVENTS"
wait_for 60 "$P's postgres, restarted" answers "$P"
echo "$P's postgres answers again $(elapsed "$T") s after the kill; states: $(states)"
wait_for 120 "one primary and one synchronous standby" settled
NEW=$(settled_primary)
if [ "$NEW" = "$P" ]; then
    echo "$P is still the primary, nothing failed over; settled $(elapsed "$T") s after the kill"
else
    echo "the monitor failed over to $NEW while $P's postgres was down, and $P rejoined as its" \
        "standby; settled $(elapsed "$T") s after the kill"
fi
sleep 5

P=$(settled_primary)
S=$(other "$P")
echo "== 2. SIGKILL of the whole of $P, the primary (keeper and postgres): the machine is lost"
T=$(now_ms)
kill -KILL -- "-$(cat "$DIR/$P.pgid")"
echo "$T $P lost" >>"$EVENTS"
wait_for 150 "$S's promotion" promoted "$S"
echo "$S promoted $(elapsed "$T") s after the loss; states: $(states)"
wait_for 150 "$S taking writes alone" alone "$S"
echo "$(now_ms) $S wait_primary (takes writes without a standby)" >>"$EVENTS"
echo "$S takes writes without a standby $(elapsed "$T") s after the loss; states: $(states)"
sleep 5

echo "== 3. $P's keeper started again: it rejoins as $S's standby"
T=$(now_ms)
start_keeper "$P"
wait_for 180 "$P back as a standby" settled
echo "$(now_ms) $P rejoined" >>"$EVENTS"
echo "$P is $(settled_primary)'s synchronous standby again $(elapsed "$T") s after its keeper started"
show_state
sleep 5

stop_load
echo "== pg_auto_failover's events"
as_pg pg_autoctl show events --pgdata "$DIR/monitor" --count 40 | cut -c1-200
if [ "$LOAD_STATUS" -ne 0 ]; then
    echo "FAILED: the load reported a loss, a double new, or marking that never resumed" >&2
    exit 1
fi
echo "== nothing acknowledged was lost"

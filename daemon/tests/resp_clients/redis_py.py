"""redis-py against Oncely's RESP face, in RESP2 or RESP3.

    python redis_py.py PORT PROTOCOL [TOKEN]

Exits 0, printing `ok redis-py VERSION RESPn`, when every answer is what a redis-py
user would expect, else 1 naming the first that is not (with what was got and what
was wanted). Run by daemon/tests/resp_clients.rs against a fresh daemon, once
without a token and once with one (then TOKEN is the daemon's token).
"""
import sys
import uuid
import warnings

import redis

port, protocol = int(sys.argv[1]), int(sys.argv[2])
token = sys.argv[3] if len(sys.argv) > 3 else None
# Every key of this run is tagged: the runs of one daemon do not meet.
tag = f"{protocol}-{uuid.uuid4().hex[:8]}"
# redis-py 8 deprecates lib_name / lib_version (for driver_info) but still sends them.
warnings.simplefilter("ignore", DeprecationWarning)


FAILURES = []


class Failed(Exception):
    """A step whose failure leaves the rest of its section without meaning."""


def fail(what):
    FAILURES.append(what)
    print(f"FAIL redis-py {redis.__version__} RESP{protocol}: {what}", flush=True)


def section(run):
    """Runs one section; an exception fails it (and only it), with its traceback."""
    try:
        run()
    except Failed:
        pass
    except Exception as e:  # noqa: BLE001 - any exception is a failure to show
        import traceback

        traceback.print_exc()
        fail(f"{run.__name__} raised {type(e).__name__}: {e}")


def d(x):
    """Text of an answer redis-py may hand back as bytes or str."""
    return x.decode() if isinstance(x, bytes) else x


def expect(what, got, want):
    if got != want:
        fail(f"{what}: got {got!r}, want {want!r}")


def refused(what, call, kind=redis.ResponseError, contains=""):
    """`call` must raise `kind` (exactly: not a subclass standing in for it)."""
    try:
        got = call()
    except kind as e:
        if contains not in str(e):
            fail(f"{what}: error {type(e).__name__}({str(e)!r}) does not say {contains!r}")
        return str(e)
    except Exception as e:  # noqa: BLE001 - any other error is the failure shown
        fail(f"{what}: raised {type(e).__name__}: {e}, want {kind.__name__}")
    fail(f"{what}: answered {got!r}, want {kind.__name__}")


def as_dict(reply):
    """A map reply: a dict in RESP3, a flat array of keys and values in RESP2."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2]))
    return {d(k): v for k, v in reply.items()}


def client(**kw):
    # On connect redis-py sends, in RESP2: AUTH (with a password), CLIENT SETNAME
    # (with client_name), CLIENT SETINFO LIB-NAME and LIB-VER (redis-py >= 5); in
    # RESP3: HELLO 3 [AUTH user password], then the same; redis-py >= 7 in RESP3
    # also CLIENT MAINT_NOTIFICATIONS ON, which Redis 7.2 refuses as we do.
    kw.setdefault("socket_timeout", 10)
    return redis.Redis(host="127.0.0.1", port=port, protocol=protocol, **kw)


# --- the handshake, with and without a password --------------------------------
if token:
    refused("wrong password", lambda: client(password="wrong-" + token).ping(),
            redis.AuthenticationError)
    refused("wrong password with a user name",
            lambda: client(username="anyone", password="wrong").ping(),
            redis.AuthenticationError)
    # Without a password: RESP2 gets NOAUTH at the first command, RESP3 at HELLO.
    refused("no password", lambda: client().set(f"noauth-{tag}", 1, nx=True),
            redis.AuthenticationError)
    auth = {"password": token}
    r = client(username="anyone", client_name=f"w-{tag}", **auth)
else:
    auth = {}
    r = client(client_name=f"w-{tag}")


NS = f"ns-{tag}"


def client_fields(conn):
    """CLIENT INFO's fields, read as text (not by redis-py's parser)."""
    line = d(conn.execute_command("CLIENT", "INFO"))
    return dict(f.split("=", 1) for f in line.split())


def handshake():
    expect("ping", r.ping(), True)
    expect("client_getname", d(r.client_getname()), f"w-{tag}")
    info = client_fields(r)
    expect("CLIENT INFO lib-name (CLIENT SETINFO)", info.get("lib-name"), "redis-py")
    expect("CLIENT INFO lib-ver (CLIENT SETINFO)", info.get("lib-ver"), redis.__version__)
    expect("CLIENT INFO resp", info.get("resp"), str(protocol))
    expect("CLIENT INFO name", info.get("name"), f"w-{tag}")
    named = client(lib_name="oncely-tests", lib_version="1.2.3", **auth)
    expect("ping with lib_name", named.ping(), True)
    info = client_fields(named)
    expect("lib_name reached the server", info.get("lib-name"), "oncely-tests")
    expect("lib_version reached the server", info.get("lib-ver"), "1.2.3")
    expect("a fresh connection has no name", named.client_getname(), None)
    expect("echo", d(r.echo("hi")), "hi")
    expect("select 0", r.execute_command("SELECT", 0), True)
    refused("select 1", lambda: r.execute_command("SELECT", 1), contains="out of range")


# --- SET NX, the Redis dedup idiom ----------------------------------------------
def set_nx():
    expect("set nx px", r.set(f"k-{tag}", 1, nx=True, px=60000), True)
    expect("set nx px again", r.set(f"k-{tag}", 1, nx=True, px=60000), None)
    expect("set nx ex", r.set(f"e-{tag}", 1, nx=True, ex=60), True)
    expect("set nx, no expiry", r.set(f"n-{tag}", "v", nx=True), True)
    expect("setnx", r.setnx(f"s-{tag}", 1), True)
    expect("setnx again", r.setnx(f"s-{tag}", 1), False)
    refused("expiry beyond the window", lambda: r.set(f"far-{tag}", 1, nx=True, ex=10**9),
            contains=f"{10**12} ms is longer than namespace default's window")
    expect("the refused expiry marked nothing", r.set(f"far-{tag}", 1, nx=True), True)
    refused("set without nx", lambda: r.set(f"x-{tag}", 1), contains="without NX")
    refused("set xx", lambda: r.set(f"k-{tag}", 1, xx=True), contains="refused")
    refused("set nx get", lambda: r.set(f"k-{tag}", 1, nx=True, get=True), contains="refused")
    refused("get", lambda: r.get(f"k-{tag}"), contains="refused")
    refused("delete", lambda: r.delete(f"k-{tag}"), contains="refused")
    refused("flushall", lambda: r.flushall(), contains="refused")
    refused("expire", lambda: r.expire(f"k-{tag}", 1), contains="refused")
    refused("watch", lambda: r.execute_command("WATCH", f"k-{tag}"), contains="WATCH is not supported")
    expect("delete and flushall changed nothing", r.set(f"k-{tag}", 1, nx=True), None)
    expect("set without nx marked nothing", r.set(f"x-{tag}", 1, nx=True), True)
    refused("empty key", lambda: r.set("", 1, nx=True), contains="empty")
    refused("unknown command", lambda: r.execute_command("NOSUCH", "x"), contains="unknown command")


# --- a pipeline without a transaction: one batch, the first occurrence wins ------
def pipeline():
    keys = [f"p-{tag}-{(i * 7) % 50}" for i in range(300)]
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.set(k, 1, nx=True, px=60000)
        answers = p.execute()
    seen = set()
    for i, (k, a) in enumerate(zip(keys, answers)):
        expect(f"pipelined set {i} ({k})", a, None if k in seen else True)
        seen.add(k)
    expect("pipelined answers", len(answers), len(keys))
    # One bad command of a pipeline fails alone.
    with r.pipeline(transaction=False) as p:
        p.set(f"q1-{tag}", 1, nx=True)
        p.set("", 1, nx=True)
        p.set(f"q2-{tag}", 1, nx=True)
        p.execute_command("BF.ADD", "no-such-namespace", "x")
        p.set(f"q1-{tag}", 1, nx=True)
        mixed = p.execute(raise_on_error=False)
    expect("pipeline around a bad ID", [mixed[0], mixed[2], mixed[4]], [True, True, None])
    expect("the bad ID's error", type(mixed[1]), redis.ResponseError)
    expect("the unknown namespace's error", type(mixed[3]), redis.ResponseError)


# --- pipeline() is MULTI/EXEC: queued, then one batch ----------------------------
def transaction():
    with r.pipeline() as p:
        p.set(f"t-{tag}", 1, nx=True)
        p.set(f"t-{tag}", 1, nx=True)
        p.execute_command("BF.ADD", "default", f"t2-{tag}")
        p.execute_command("BF.MADD", "default", f"t2-{tag}", f"t3-{tag}")
        p.execute_command("BF.EXISTS", "default", f"t3-{tag}")
        expect("transaction", p.execute(), [True, None, 1, [0, 1], 1])
    # A command refused at EXEC fails alone inside the transaction, as in Redis.
    with r.pipeline() as p:
        p.set(f"u-{tag}", 1)
        p.set(f"u2-{tag}", 1, nx=True)
        got = p.execute(raise_on_error=False)
    expect("transaction with a refused SET", [type(got[0]), got[1]], [redis.ResponseError, True])
    expect("the refused SET in a transaction marked nothing", r.set(f"u-{tag}", 1, nx=True), True)


# --- BF.* -----------------------------------------------------------------------
def bloom():
    expect("bf.add", r.execute_command("BF.ADD", "default", f"b-{tag}"), 1)
    expect("bf.add again", r.execute_command("BF.ADD", "default", f"b-{tag}"), 0)
    expect("bf.madd", r.execute_command("BF.MADD", "default", f"a-{tag}", f"c-{tag}", f"a-{tag}", f"b-{tag}"),
           [1, 1, 0, 0])
    expect("bf.exists", r.execute_command("BF.EXISTS", "default", f"a-{tag}"), 1)
    expect("bf.exists unseen", r.execute_command("BF.EXISTS", "default", f"z-{tag}"), 0)
    expect("bf.mexists", r.execute_command("BF.MEXISTS", "default", f"a-{tag}", f"z-{tag}", f"k-{tag}"), [1, 0, 1])
    expect("bf.exists marked nothing", r.execute_command("BF.ADD", "default", f"z-{tag}"), 1)
    ns = NS
    expect("bf.reserve", d(r.execute_command("BF.RESERVE", ns, "0.001", "5000")), "OK")
    refused("bf.reserve again", lambda: r.execute_command("BF.RESERVE", ns, "0.001", "5000"),
            contains="item exists")
    expect("bf.add in the reserved namespace", r.execute_command("BF.ADD", ns, f"a-{tag}"), 1)
    refused("bf.add in an unknown namespace", lambda: r.execute_command("BF.ADD", f"none-{tag}", "x"),
            contains="unknown namespace")
    refused("bf.reserve with a bad rate", lambda: r.execute_command("BF.RESERVE", f"r-{tag}", "2", "10"),
            contains="error rate")


# --- ONCELY.MARK / CHECK: owners and replays --------------------------------------
def marks():
    def verdicts(reply):
        return [d(v) for v in reply]


    mark = ("ONCELY.MARK", "default", "OWNER", f"o1-{tag}", "IDS")
    expect("oncely.mark", verdicts(r.execute_command(*mark, f"m1-{tag}", f"m2-{tag}")), ["new", "new"])
    expect("oncely.mark, same owner: replayed",
           verdicts(r.execute_command(*mark, f"m1-{tag}", f"m2-{tag}", f"m3-{tag}")),
           ["replayed", "replayed", "new"])
    expect("oncely.mark, another owner",
           verdicts(r.execute_command("ONCELY.MARK", "default", "OWNER", f"o2-{tag}", "IDS", f"m1-{tag}")),
           ["duplicate"])
    expect("oncely.mark, no owner",
           verdicts(r.execute_command("ONCELY.MARK", "default", "IDS", f"m2-{tag}", f"m4-{tag}", f"m4-{tag}")),
           ["duplicate", "new", "duplicate"])
    expect("oncely.check",
           verdicts(r.execute_command("ONCELY.CHECK", "default", "IDS", f"m1-{tag}", f"m9-{tag}")),
           ["duplicate", "new"])
    expect("oncely.check marked nothing",
           verdicts(r.execute_command("ONCELY.CHECK", "default", "IDS", f"m9-{tag}")), ["new"])
    refused("oncely.mark without IDS", lambda: r.execute_command("ONCELY.MARK", "default", f"m1-{tag}", f"m2-{tag}"),
            contains="syntax error")
    refused("oncely.mark of an empty ID", lambda: r.execute_command("ONCELY.MARK", "default", "IDS", ""),
            contains="empty")


# --- claims: CLAIM / COMPLETE / RELEASE ------------------------------------------
def claims():
    def claim(id_, owner, lease=60000):
        c = as_dict(r.execute_command("ONCELY.CLAIM", "default", id_, "OWNER", owner, "LEASE", lease))
        return {k: d(v) for k, v in c.items()}


    c = claim(f"j-{tag}", "w1")
    expect("claim", (c["verdict"], bool(c["replayed"]), bool(c["taken_over"])), ("acquired", False, False))
    expect("claim's until_ms", isinstance(c["until_ms"], int) and c["until_ms"] > 0, True)
    again = claim(f"j-{tag}", "w1")
    expect("claim again by its owner", (again["verdict"], bool(again["replayed"])), ("acquired", True))
    expect("claim by another owner", claim(f"j-{tag}", "w2")["verdict"], "in_progress")
    refused("complete by another owner",
            lambda: r.execute_command("ONCELY.COMPLETE", "default", f"j-{tag}", "OWNER", "w2"),
            contains="another owner")
    expect("release", d(r.execute_command("ONCELY.RELEASE", "default", f"j-{tag}", "OWNER", "w1")), "OK")
    expect("claim after release", claim(f"j-{tag}", "w2")["verdict"], "acquired")
    expect("complete", d(r.execute_command("ONCELY.COMPLETE", "default", f"j-{tag}", "OWNER", "w2")), "OK")
    expect("claim after complete", claim(f"j-{tag}", "w3")["verdict"], "duplicate")
    expect("the completed ID is marked for SET NX too", r.set(f"j-{tag}", 1, nx=True), None)
    refused("release after complete",
            lambda: r.execute_command("ONCELY.RELEASE", "default", f"j-{tag}", "OWNER", "w2"),
            contains="done")
    refused("claim without a lease", lambda: r.execute_command("ONCELY.CLAIM", "default", "x", "OWNER", "w", "LEASE", 0),
            contains="lease")


# --- checkpoints -------------------------------------------------------------------
def checkpoints():
    expect("checkpoint unset", r.execute_command("ONCELY.CHECKPOINT", "GET", "default", f"c-{tag}"), None)
    expect("checkpoint set", d(r.execute_command("ONCELY.CHECKPOINT", "SET", "default", f"c-{tag}", "offset-9")), "OK")
    expect("checkpoint get", d(r.execute_command("ONCELY.CHECKPOINT", "GET", "default", f"c-{tag}")), "offset-9")
    r.execute_command("ONCELY.CHECKPOINT", "SET", "default", f"c-{tag}", "offset-10")
    expect("checkpoint moved", d(r.execute_command("ONCELY.CHECKPOINT", "GET", "default", f"c-{tag}")), "offset-10")
    # Preconditions: IFEQ the position read, NX none stored; a stale one is refused
    # with the stored position and changes nothing.
    cp = ("ONCELY.CHECKPOINT", "SET", "default", f"c-{tag}")
    expect("checkpoint ifeq", d(r.execute_command(*cp, "offset-11", "IFEQ", "offset-10")), "OK")
    said = refused("checkpoint stale ifeq", lambda: r.execute_command(*cp, "offset-12", "IFEQ", "offset-10"),
                   contains='is at "offset-11", not at "offset-10"')
    expect("conflict code", said.split(" ")[0] if said.startswith("CHECKPOINT_CONFLICT") else said,
           "CHECKPOINT_CONFLICT")
    refused("checkpoint nx over one stored", lambda: r.execute_command(*cp, "offset-12", "NX"),
            contains="not unset as expected")
    expect("checkpoint unmoved", d(r.execute_command("ONCELY.CHECKPOINT", "GET", "default", f"c-{tag}")), "offset-11")
    fresh = ("ONCELY.CHECKPOINT", "SET", "default", f"n-{tag}")
    expect("checkpoint nx", d(r.execute_command(*fresh, "p-1", "NX")), "OK")
    expect("checkpoint nx retried", d(r.execute_command(*fresh, "p-1", "NX")), "OK")
    refused("checkpoint bad precondition", lambda: r.execute_command(*fresh, "p-2", "IFEQ"), contains="syntax")


# --- ONCELY.FORGET ---------------------------------------------------------------------
def forget():
    expect("mark before forget", r.set(f"fg-{tag}", 1, nx=True), True)
    expect("forget", r.execute_command("ONCELY.FORGET", "default", f"fg-{tag}", f"fg-{tag}", f"fg-unseen-{tag}"),
           [1, 0, 0])
    expect("given back", r.set(f"fg-{tag}", 1, nx=True), True)
    expect("forget retried after the mark", r.execute_command("ONCELY.FORGET", "default", f"fg-{tag}"), [1])
    expect("forget retried", r.execute_command("ONCELY.FORGET", "default", f"fg-{tag}"), [0])


# --- ONCELY.NS, INFO, COMMAND ---------------------------------------------------------
def introspection():
    ns = NS
    nsinfo = as_dict(r.execute_command("ONCELY.NS", "INFO", ns))
    expect("ns info fp_rate (from BF.RESERVE)", float(nsinfo["fp_rate"]), 0.001)
    expect("ns info capacity (from BF.RESERVE)", nsinfo["generation_capacity"], 5000)
    expect("ns list", ns in [d(n) for n in r.execute_command("ONCELY.NS", "LIST")], True)
    server = r.info()
    expect("info redis_version", server.get("redis_version"), "7.2.0")
    expect("info server section", r.info("server").get("redis_mode"), "standalone")
    # COMMAND, parsed as redis-py parses it (its cluster client finds keys so).
    commands = r.command()
    expect("COMMAND lists set", commands["set"]["arity"], -3)
    expect("COMMAND first key of bf.add", commands["bf.add"]["first_key_pos"], 1)
    expect("COMMAND COUNT", r.command_count(), len(commands))
    # r.command_docs() raises NotImplementedError by design in redis-py: sent as is
    # (as one name, so that redis-py does not parse the answer as COMMAND's).
    docs = as_dict(r.execute_command("COMMAND DOCS"))
    for name in ["set", "bf.add", "bf.madd", "bf.exists", "bf.mexists", "bf.reserve",
                 "oncely.mark", "oncely.check", "oncely.claim", "oncely.complete",
                 "oncely.release", "oncely.checkpoint", "oncely.forget", "oncely.ns"]:
        if name not in docs:
            fail(f"COMMAND DOCS has no {name}: {sorted(docs)}")
    mark_doc = as_dict(docs["oncely.mark"])
    expect("COMMAND DOCS oncely.mark syntax", "OWNER" in d(mark_doc["syntax"]), True)
    one = as_dict(r.execute_command("COMMAND DOCS", "ONCELY.CLAIM"))
    expect("COMMAND DOCS oncely.claim alone", list(one), ["oncely.claim"])


# --- RESET ------------------------------------------------------------------
def reset():
    # What RESET does to the connection is shown on a raw socket by the Rust side
    # (redis-py's pool may hand the connection back re-authenticated).
    expect("reset", d(client(**auth).execute_command("RESET")), "RESET")


for run in [handshake, set_nx, pipeline, transaction, bloom, marks, claims, checkpoints, forget, introspection, reset]:
    section(run)
if FAILURES:
    print(f"{len(FAILURES)} failures")
    sys.exit(1)
print(f"ok redis-py {redis.__version__} RESP{protocol}")

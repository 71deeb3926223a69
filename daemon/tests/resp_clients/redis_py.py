"""redis-py against Oncely's RESP face, in RESP2 or RESP3.

    python redis_py.py PORT PROTOCOL [TOKEN]

Exits 0 when every answer is what redis-py users would expect, else 1 naming the
first that is not. Run by daemon/tests/resp_clients.rs.
"""
import sys
import uuid

import redis

port, protocol = int(sys.argv[1]), int(sys.argv[2])
token = sys.argv[3] if len(sys.argv) > 3 else None
tag = uuid.uuid4().hex[:8]


def d(x):
    """Text of an answer redis-py may hand back as bytes or str."""
    return x.decode() if isinstance(x, bytes) else x


def expect(what, got, want):
    if got != want:
        print(f"FAIL {what}: got {got!r}, want {want!r}")
        sys.exit(1)


def client(**kw):
    # redis-py 5 sends HELLO (RESP3) or AUTH, CLIENT SETNAME and CLIENT SETINFO
    # LIB-NAME / LIB-VER on connect.
    return redis.Redis(port=port, protocol=protocol, client_name=f"w-{tag}", **kw)


if token:
    try:
        client(password="wrong-" + token).ping()
        print("FAIL a wrong password connected")
        sys.exit(1)
    except redis.AuthenticationError:
        pass
    try:
        client().set(f"noauth-{tag}", 1, nx=True)
        print("FAIL no password was let in")
        sys.exit(1)
    except redis.AuthenticationError:
        pass
    except redis.ResponseError as e:
        expect("NOAUTH", str(e).startswith("Authentication required"), True)
    r = client(password=token, username="anyone")
else:
    r = client()

expect("ping", r.ping(), True)
expect("client name", d(r.client_getname()), f"w-{tag}")
expect("set nx", r.set(f"k-{tag}", 1, nx=True, px=60000), True)
expect("set nx again", r.set(f"k-{tag}", 1, nx=True, px=60000), None)
expect("set nx ex", r.set(f"e-{tag}", 1, nx=True, ex=60), True)
try:
    r.set(f"x-{tag}", 1)
    print("FAIL SET without NX was accepted")
    sys.exit(1)
except redis.ResponseError as e:
    expect("SET without NX refused", "without NX" in str(e), True)
try:
    r.delete(f"k-{tag}")
    print("FAIL DEL was accepted")
    sys.exit(1)
except redis.ResponseError:
    pass
expect("DEL changed nothing", r.set(f"k-{tag}", 1, nx=True), None)

# A pipeline without a transaction, duplicates inside it: the first occurrence wins.
keys = [f"p-{tag}-{i % 50}" for i in range(200)]
with r.pipeline(transaction=False) as p:
    for k in keys:
        p.set(k, 1, nx=True)
    answers = p.execute()
seen = set()
for k, a in zip(keys, answers):
    expect(f"pipelined {k}", a, None if k in seen else True)
    seen.add(k)

# pipeline() is MULTI/EXEC: one batch.
with r.pipeline() as p:
    p.set(f"t-{tag}", 1, nx=True)
    p.set(f"t-{tag}", 1, nx=True)
    p.execute_command("BF.ADD", "default", f"t2-{tag}")
    expect("transaction", p.execute(), [True, None, 1])

expect("bf.madd", r.execute_command("BF.MADD", "default", f"a-{tag}", f"b-{tag}", f"a-{tag}"), [1, 1, 0])
expect("bf.mexists", r.execute_command("BF.MEXISTS", "default", f"a-{tag}", f"z-{tag}"), [1, 0])
marked = r.execute_command("ONCELY.MARK", "default", "OWNER", f"o-{tag}", "IDS", f"m1-{tag}", f"m2-{tag}")
expect("oncely.mark", [d(v) for v in marked], ["new", "new"])
again = r.execute_command("ONCELY.MARK", "default", "OWNER", f"o-{tag}", "IDS", f"m1-{tag}")
expect("replayed", [d(v) for v in again], ["replayed"])

claim = r.execute_command("ONCELY.CLAIM", "default", f"j-{tag}", "OWNER", "w1", "LEASE", "60000")
if isinstance(claim, list):  # RESP2: a flat array of keys and values
    claim = dict(zip(claim[::2], claim[1::2]))
claim = {d(k): v for k, v in claim.items()}
expect("claim verdict", d(claim["verdict"]), "acquired")
expect("complete", d(r.execute_command("ONCELY.COMPLETE", "default", f"j-{tag}", "OWNER", "w1")), "OK")
expect("completed is marked", r.set(f"j-{tag}", 1, nx=True), None)
r.execute_command("ONCELY.CHECKPOINT", "SET", "default", f"c-{tag}", "offset-9")
expect("checkpoint", d(r.execute_command("ONCELY.CHECKPOINT", "GET", "default", f"c-{tag}")), "offset-9")

info = r.info()
expect("info redis_version", info.get("redis_version"), "7.2.0")
# COMMAND, parsed as redis-py parses it (its cluster client discovers keys so).
commands = r.command()
expect("COMMAND lists set", commands["set"]["arity"], -3)
expect("COMMAND first key", commands["bf.add"]["first_key_pos"], 1)
expect("COMMAND COUNT", r.command_count(), len(commands))
try:
    r.execute_command("ONCELY.MARK", "default", "IDS", "")
    print("FAIL an empty ID was accepted")
    sys.exit(1)
except redis.ResponseError as e:
    expect("empty ID error", "empty" in str(e), True)
print(f"ok RESP{protocol}")

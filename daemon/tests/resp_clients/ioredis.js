// ioredis against Oncely's RESP face (ioredis 5 speaks RESP2, ioredis 6 RESP3).
//
//     NODE_PATH=$(setup.sh ioredis VERSION) node ioredis.js PORT [TOKEN]
//
// Exits 0, printing `ok ioredis VERSION`, when every answer is what an ioredis user
// would expect, else 1 naming each that is not (what was got, what was wanted).
// Run by daemon/tests/resp_clients.rs against a fresh daemon, without a token and
// with one (then TOKEN is the daemon's token).
const Redis = require("ioredis");
const version = require("ioredis/package.json").version;
const [port, token] = [Number(process.argv[2]), process.argv[3]];
const tag = `${version}-${Math.random().toString(16).slice(2, 10)}`;
const failures = [];

function fail(what) {
  failures.push(what);
  console.log(`FAIL ioredis ${version}: ${what}`);
}

function expect(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

// `promise` must be rejected with an error whose message contains `says`, or (a
// refused handshake) rejected after `client` reported such an error.
async function refused(what, promise, says, client) {
  try {
    const got = await promise;
    fail(`${what}: answered ${JSON.stringify(got)}, want an error saying ${JSON.stringify(says)}`);
  } catch (e) {
    const told = [String(e && e.message), ...(client ? client.events : [])];
    if (!(e instanceof Error) || !told.some((m) => m.includes(says))) {
      fail(`${what}: ${JSON.stringify(told)}, want an error saying ${JSON.stringify(says)}`);
    }
  }
}

// A client that does not retry: a refused connection fails at once.
function connect(extra) {
  const r = new Redis({
    host: "127.0.0.1",
    port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 5000,
    commandTimeout: 10000,
    ...extra,
  });
  // A refused handshake closes the connection: the server's words come as events.
  r.events = [];
  r.on("error", (e) => r.events.push(String(e && e.message)));
  return r;
}

async function handshake() {
  if (!token) return {};
  // A wrong password: ioredis sends AUTH (or HELLO 3 AUTH) on connect and fails.
  const wrong = connect({ password: "wrong-password-0123456789" });
  await refused("a wrong password", wrong.connect().then(() => wrong.ping()), "WRONGPASS", wrong);
  wrong.disconnect();
  // No password: refused at the first command (ioredis 6: at HELLO 3).
  const none = connect({});
  await refused("no password", none.connect().then(() => none.set(`noauth-${tag}`, 1, "NX")), "NOAUTH", none);
  none.disconnect();
  // Any user name with the token as password.
  const named = connect({ username: "anyone", password: token });
  await named.connect();
  expect("user name and token", await named.ping(), "PONG");
  named.disconnect();
  return { password: token };
}

async function main() {
  const auth = await handshake();
  const r = connect({ ...auth, connectionName: `io-${tag}` });
  await r.connect();
  expect("ping", await r.ping(), "PONG");
  expect("client getname", await r.client("GETNAME"), `io-${tag}`);
  if (version.startsWith("6.")) {
    // ioredis 6 sends CLIENT SETINFO on connect.
    const info = await r.client("INFO");
    expect("CLIENT SETINFO lib-name", /lib-name=ioredis /.test(info), true);
    expect("RESP3 by default", /resp=3/.test(info), true);
  }

  // SET NX with an expiry, options in either order.
  expect("set px nx", await r.set(`k-${tag}`, 1, "PX", 1000, "NX"), "OK");
  expect("set px nx again", await r.set(`k-${tag}`, 1, "PX", 1000, "NX"), null);
  expect("set nx ex", await r.set(`e-${tag}`, 1, "NX", "EX", 60), "OK");
  await refused("expiry beyond the window", r.set(`far-${tag}`, 1, "PX", 1e12, "NX"), "longer than namespace default's window");
  expect("the refused expiry marked nothing", await r.set(`far-${tag}`, 1, "NX"), "OK");
  await refused("set without nx", r.set(`x-${tag}`, 1), "without NX");
  await refused("del", r.del(`k-${tag}`), "refused");
  await refused("flushall", r.flushall(), "refused");
  expect("del and flushall changed nothing", await r.set(`k-${tag}`, 1, "NX"), null);

  // A pipeline with duplicates: one answer each, the first occurrence is new.
  const p = r.pipeline();
  const keys = [];
  for (let i = 0; i < 200; i++) {
    keys.push(`p-${tag}-${(i * 7) % 40}`);
    p.set(keys[i], 1, "PX", 60000, "NX");
  }
  p.set("", 1, "NX"); // one bad ID fails only its own command
  p.set(`p-${tag}-0`, 1, "NX");
  const answers = await p.exec();
  const seen = new Set();
  keys.forEach((k, i) => {
    expect(`pipelined ${i} (${k})`, answers[i], [null, seen.has(k) ? null : "OK"]);
    seen.add(k);
  });
  expect("the bad ID in the pipeline", String(answers[200][0]).includes("empty"), true);
  expect("after the bad ID", answers[201], [null, null]);

  // multi() is MULTI/EXEC: one batch.
  const m = await r
    .multi()
    .set(`t-${tag}`, 1, "NX")
    .set(`t-${tag}`, 1, "NX")
    .call("BF.MADD", "default", `t-${tag}`, `t2-${tag}`)
    .exec();
  expect("multi", m, [[null, "OK"], [null, null], [null, [0, 1]]]);

  // BF.*, ONCELY.*.
  expect("bf.madd", await r.call("BF.MADD", "default", `a-${tag}`, `b-${tag}`, `a-${tag}`), [1, 1, 0]);
  expect("bf.add", await r.call("BF.ADD", "default", `a-${tag}`), 0);
  expect("bf.exists", await r.call("BF.EXISTS", "default", `b-${tag}`), 1);
  expect("bf.mexists", await r.call("BF.MEXISTS", "default", `b-${tag}`, `z-${tag}`), [1, 0]);
  await refused("unknown namespace", r.call("BF.ADD", `none-${tag}`, "x"), "unknown namespace");
  const mark = ["ONCELY.MARK", "default", "OWNER", `o-${tag}`, "IDS"];
  expect("oncely.mark", await r.call(...mark, `m1-${tag}`, `m2-${tag}`), ["new", "new"]);
  expect("oncely.mark again: replayed", await r.call(...mark, `m1-${tag}`), ["replayed"]);
  const claim = await r.call("ONCELY.CLAIM", "default", `j-${tag}`, "OWNER", "w1", "LEASE", 60000);
  // A map: RESP2 and ioredis 6's RESP3 both hand it over as [key, value, ...].
  expect("oncely.claim", claim.slice(0, 2), ["verdict", "acquired"]);
  expect("oncely.complete", await r.call("ONCELY.COMPLETE", "default", `j-${tag}`, "OWNER", "w1"), "OK");
  expect("completed is marked", await r.set(`j-${tag}`, 1, "NX"), null);
  r.disconnect();
}

main()
  .catch((e) => fail(`threw ${e && e.stack ? e.stack : e}`))
  .finally(() => {
    if (failures.length) {
      console.log(`${failures.length} failures`);
      process.exit(1);
    }
    console.log(`ok ioredis ${version}`);
    process.exit(0);
  });

// ioredis against Oncely's RESP face.
//
//     NODE_PATH=DIR/node_modules node ioredis.js PORT [TOKEN]
//
// Exits 0 when every answer is what ioredis users would expect, else 1 naming the
// first that is not. Run by daemon/tests/resp_clients.rs.
const Redis = require("ioredis");
const [port, token] = [Number(process.argv[2]), process.argv[3]];
const tag = Math.random().toString(16).slice(2, 10);

function expect(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    console.log(`FAIL ${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    process.exit(1);
  }
}

async function main() {
  const opts = { port, host: "127.0.0.1", maxRetriesPerRequest: 1, lazyConnect: true };
  if (token) {
    const wrong = new Redis({ ...opts, password: "wrong", retryStrategy: () => null });
    let refused = false;
    wrong.on("error", (e) => { refused ||= /WRONGPASS/.test(String(e)); });
    try { await wrong.connect(); await wrong.ping(); } catch (e) { refused ||= /WRONGPASS/.test(String(e)); }
    wrong.disconnect();
    expect("wrong password refused", refused, true);
    opts.password = token;
  }
  const r = new Redis(opts);
  await r.connect();
  expect("ping", await r.ping(), "PONG");
  expect("set nx px", await r.set(`k-${tag}`, 1, "PX", 60000, "NX"), "OK");
  expect("set nx again", await r.set(`k-${tag}`, 1, "PX", 60000, "NX"), null);
  const p = r.pipeline();
  const keys = [];
  for (let i = 0; i < 100; i++) { keys.push(`p-${tag}-${i % 25}`); p.set(keys[i], 1, "NX"); }
  const answers = await p.exec();
  const seen = new Set();
  keys.forEach((k, i) => {
    expect(`pipelined ${k}`, answers[i], [null, seen.has(k) ? null : "OK"]);
    seen.add(k);
  });
  const m = await r.multi().set(`t-${tag}`, 1, "NX").set(`t-${tag}`, 1, "NX").exec();
  expect("multi", m, [[null, "OK"], [null, null]]);
  expect("bf.madd", await r.call("BF.MADD", "default", `a-${tag}`, `a-${tag}`), [1, 0]);
  let refused = "";
  try { await r.del(`k-${tag}`); } catch (e) { refused = String(e); }
  expect("del refused", /refused/.test(refused), true);
  r.disconnect();
  console.log("ok ioredis");
}

main().catch((e) => { console.log(`FAIL ${e}`); process.exit(1); });

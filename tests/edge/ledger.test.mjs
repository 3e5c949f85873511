// The delivery ledger end to end (issue 17): a load through the edge
// (worker in Miniflare → queue → consumer → real backend → MariaDB) with
// client re-sends, invalid events, malformed bodies, a Segment partial batch,
// a rate-limited burst, an unknown key, poison, a queue redelivery, a backend
// 503 and a backend SIGKILL + restart. Once it settles, GET /v1/stats/delivery
// must count each reason exactly as sent, stored = distinct ids, resent =
// re-sends, in_flight 0, balanced.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { Backend, startWorker, seedKey, newKey, post, sql, eventually, deadLetters } from "./harness.mjs";

const ENV = "ledger";
const backend = new Backend();
let mf, limited, proxy, envId, key, readToken;
const started = Date.now();

// A proxy in front of the backend for the main worker: /v1/ingest requests
// carrying a `poison-` envelope are refused (400, the consumer dead-letters
// them), the first carrying a `r503-` one gets a 503 (the consumer retries),
// the first carrying a `redeliver-` one is stored and its answer dropped (the
// consumer sends it again: a redelivery); the first report naming
// `invalid_json` gets a 503 (the report message is retried). A backend that
// is down is a 503.
const faults = { r503: 0, redeliver: 0, report503: 0, poison: 0 };
function startProxy() {
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const text = body.toString();
    const path = req.url.split("?")[0];
    if (path === "/v1/ingest") {
      if (text.includes('"poison-')) {
        faults.poison++;
        return res.writeHead(400, { "Content-Type": "application/json" }).end('{"error":"invalid_body","message":"poison (test proxy)"}');
      }
      if (text.includes('"r503-') && faults.r503 === 0) {
        faults.r503++;
        return res.writeHead(503, { "Content-Type": "application/json", "Retry-After": "1" }).end('{"error":"store_unavailable"}');
      }
    }
    if (path === "/v1/ingest/reports" && text.includes("invalid_json") && faults.report503 === 0) {
      faults.report503++;
      return res.writeHead(503, { "Content-Type": "application/json" }).end('{"error":"store_unavailable"}');
    }
    let upstream;
    try {
      upstream = await fetch(`${backend.url}${req.url}`, { method: req.method, headers: req.headers, body: req.method === "GET" ? undefined : body });
    } catch (e) {
      return res.writeHead(503, { "Content-Type": "application/json" }).end(JSON.stringify({ error: "store_unavailable", message: String(e) }));
    }
    const answer = Buffer.from(await upstream.arrayBuffer());
    if (path === "/v1/ingest" && text.includes('"redeliver-') && faults.redeliver === 0 && upstream.status === 200) {
      faults.redeliver++;
      req.socket.destroy();
      return;
    }
    res.writeHead(upstream.status, Object.fromEntries(upstream.headers));
    res.end(answer);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

before(async () => {
  await backend.setup();
  envId = await backend.createEnv(ENV, "a");
  await backend.start();
  readToken = (await backend.cli("env", "token", ENV)).trim().split("\n").pop().trim();
  proxy = await startProxy();
  const vars = { RETRY_BASE_SECONDS: "1", RETRY_MAX_SECONDS: "2" };
  mf = await startWorker({ backendUrl: `http://127.0.0.1:${proxy.address().port}`, vars });
  // A second worker (its own isolate, queue and limiter) whose keys get 3 requests per 10 s.
  limited = await startWorker({ backendUrl: backend.url, vars, rateLimit: 3 });
  key = newKey();
  await seedKey(mf, key, { env_id: envId, name: ENV, status: "active" });
  await seedKey(limited, key, { env_id: envId, name: ENV, status: "active" });
});

after(async () => {
  await mf?.dispose().catch(() => {});
  await limited?.dispose().catch(() => {});
  proxy?.close();
  await backend.drop();
});

/** What the test sent, as the ledger should count it. */
const sent = { accepted: 0, rejected: {}, ids: new Set(), resent: 0, deadLettered: 0 };
const reject = (code, n) => (sent.rejected[code] = (sent.rejected[code] ?? 0) + n);

async function events(ids, { on = mf, name = "ledger" } = {}) {
  const body = ids.map((id, i) => ({ event: name, id, properties: { i } }));
  const res = await post(on, "/v1/events", { key, body });
  if (res.status === 202) {
    sent.accepted += ids.length;
    for (const id of ids) sent.ids.add(id);
  }
  return res;
}

async function ledger(extra = {}) {
  const q = new URLSearchParams({ env: ENV, from: String(started - 60_000), to: String(Date.now() + 120_000), ...extra });
  const res = await fetch(`${backend.url}/v1/stats/delivery?${q}`, { headers: { Authorization: `Bearer ${readToken}` } });
  if (res.status !== 200) throw new Error(`stats/delivery answered ${res.status}: ${await res.text()}`);
  return res.json();
}

test("the ledger balances after a load with refusals, re-sends, poison, redelivery and a SIGKILL", async () => {
  // 1. Valid events, 100 requests × 20, 4 at a time; the backend is
  //    SIGKILLed after a quarter of them and restarted 3 s later. Refused
  //    requests are sent while it is down: their reports wait in the queue.
  const REQUESTS = Number(process.env.SLUICE_LEDGER_REQUESTS || 100);
  const PER = 20;
  let next = 0;
  let done = 0;
  const valid = async () => {
    while (next < REQUESTS) {
      const r = next++;
      const res = await events(Array.from({ length: PER }, (_, i) => `v-${r * PER + i}`));
      assert.equal(res.status, 202, res.text);
      done++;
    }
  };
  const fault = async () => {
    await eventually(() => done >= REQUESTS / 4, { ms: 60_000, every: 20, what: "a quarter of the load" });
    await backend.kill();
    // Refusals, while the backend is down.
    for (let r = 0; r < 4; r++) {
      const body = [{ event: "ok", id: `bad-${r}-0` }, { event: "" }, { event: "ok" }, { event: "ok" }, { event: "ok" }];
      const res = await post(mf, "/v1/events", { key, body });
      assert.equal(res.status, 422, res.text);
      reject("invalid_events", body.length);
    }
    for (let r = 0; r < 3; r++) {
      const res = await post(mf, "/v1/events", { key, raw: `{"event": "broken ${r}"` });
      assert.equal(res.status, 400, res.text);
      assert.equal(res.json?.error, "invalid_json");
      reject("invalid_json", 1);
    }
    await sleep(3_000);
    await backend.start();
  };
  await Promise.all([valid(), valid(), valid(), valid(), fault()]);

  // 2. Client re-sends: the first 100 ids again, in new requests.
  await eventually(async () => (await backend.count("a", envId)) >= 100, { ms: 60_000, what: "the first events stored" });
  for (let r = 0; r < 5; r++) {
    const ids = Array.from({ length: PER }, (_, i) => `v-${r * PER + i}`);
    assert.equal((await events(ids)).status, 202);
    sent.resent += ids.length;
  }

  // 3. A Segment batch with 3 good and 2 bad messages: 200, partly refused.
  const segment = {
    batch: [
      { type: "track", event: "seg", userId: "u1", messageId: "seg-1" },
      { type: "track", userId: "u1", messageId: "seg-bad-1" },
      { type: "track", event: "seg", userId: "u1", messageId: "seg-2" },
      { type: "track", event: "seg", messageId: "seg-bad-2" },
      { type: "identify", userId: "u1", messageId: "seg-3" },
    ],
  };
  const seg = await post(mf, "/v1/batch", { key, body: segment });
  assert.equal(seg.status, 200, seg.text);
  assert.equal(seg.json.rejected, 2, seg.text);
  sent.accepted += 3;
  for (const id of ["seg-1", "seg-2", "seg-3"]) sent.ids.add(id);
  reject("invalid_events", 2);

  // 4. An unknown key: refused, and no environment's business.
  assert.equal((await post(mf, "/v1/events", { key: newKey(), body: [{ event: "x" }] })).status, 401);
  // The worker logs it, the only trace it leaves.
  await eventually(() => mf.logs.join("").includes('"event":"request_refused"'), { ms: 5_000, what: "the 401 logged" });

  // 5. One request of 1,000 events over several queue messages and backend
  //    sub-batches: its acceptance arrives in parts and counts once.
  const big = Array.from({ length: 1000 }, (_, i) => ({ event: "big", id: `big-${i}`, properties: { pad: "x".repeat(400) } }));
  const bigRes = await post(mf, "/v1/events", { key, body: big });
  assert.equal(bigRes.status, 202, bigRes.text);
  sent.accepted += big.length;
  for (const e of big) sent.ids.add(e.id);

  // 6. Through the proxy's faults: a 503 once, a lost answer (redelivery), poison.
  assert.equal((await events(Array.from({ length: PER }, (_, i) => `r503-${i}`))).status, 202);
  assert.equal((await events(Array.from({ length: PER }, (_, i) => `redeliver-${i}`))).status, 202);
  const poison = Array.from({ length: 5 }, (_, i) => `poison-${i}`);
  assert.equal((await events(poison)).status, 202);
  for (const id of poison) sent.ids.delete(id);
  sent.deadLettered += poison.length;
  // A message no edge sent: dead-lettered, and counted nowhere.
  await (await mf.getQueueProducer("EVENTS")).send("not json at all", { contentType: "text" });

  // 7. A burst at the rate-limited worker: 3 pass per 10 s, the rest are 429.
  let limitedCount = 0;
  for (let r = 0; r < 8; r++) {
    const res = await events([`limited-${r}-a`, `limited-${r}-b`], { on: limited });
    if (res.status === 429) {
      limitedCount++;
      reject("rate_limited", 1);
    } else assert.equal(res.status, 202, res.text);
  }
  // (A burst may straddle two of the limiter's windows.)
  assert.ok(limitedCount >= 2, `${limitedCount} of 8 were rate limited`);

  // Settle: every accepted event accounted for, every refusal reported.
  let last;
  try {
    await eventually(
      async () => {
        last = await ledger();
        return last.in_flight === 0 && last.accepted === sent.accepted && last.dead_lettered === sent.deadLettered && JSON.stringify(last.rejected) === JSON.stringify(sortKeys(sent.rejected));
      },
      { ms: 150_000, every: 1_000, what: "the ledger to settle" },
    );
  } catch (e) {
    const letters = await deadLetters(mf);
    throw new Error(`${e.message}\nledger: ${JSON.stringify(last)}\nsent: ${JSON.stringify({ ...sent, ids: sent.ids.size })}\nfaults: ${JSON.stringify(faults)}\ndead letters: ${letters.length}\nworker log tail: ${mf.logs.slice(-15).join("")}`);
  }
  const [[rows, distinct]] = await sql(`SELECT COUNT(*), COUNT(DISTINCT client_id) FROM events WHERE env_id = ${envId}`, backend.shards.a);
  console.log(`ledger: ${JSON.stringify(last)}\nfaults: ${JSON.stringify(faults)}`);
  assert.equal(Number(rows), Number(distinct), "no duplicate rows");
  assert.equal(Number(distinct), sent.ids.size, "every accepted event but the poison stored");
  assert.equal(last.stored, sent.ids.size, "stored = distinct ids");
  assert.equal(last.resent, sent.resent, "resent = the client's re-sends");
  assert.equal(last.dead_lettered, sent.deadLettered);
  assert.equal(last.lost, 0);
  assert.deepEqual(last.rejected, sortKeys(sent.rejected), "each reason counted as sent");
  assert.equal(last.received, sent.accepted + Object.values(sent.rejected).reduce((a, b) => a + b, 0));
  assert.equal(last.in_flight, 0);
  assert.equal(last.balanced, true);
  assert.ok(last.redelivered >= PER, `the lost answer's batch counted as redelivered (${last.redelivered})`);
  // Per minute too: every minute of the load adds up on its own.
  const { series } = await ledger({ interval: "minute" });
  assert.ok(series.length >= 1, JSON.stringify(series));
  for (const point of series) assert.equal(point.in_flight, 0, `minute ${point.t}: ${JSON.stringify(point)}`);
  assert.equal(series.reduce((n, p) => n + p.accepted, 0), sent.accepted, "the minutes sum to the range");
  assert.ok(faults.r503 === 1 && faults.redeliver === 1 && faults.report503 === 1 && faults.poison >= 1, JSON.stringify(faults));
});

function sortKeys(o) {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}

// The bound is 5 s from the refused request to the backend; the
// figure is printed (a timed assertion would flake on a loaded machine) and
// the refusal must arrive at all within a bound no machine reaches.
test("a refusal reaches the ledger from the request that saw it, without a later request", async () => {
  const before = (await ledger()).rejected.empty_batch ?? 0;
  const res = await post(mf, "/v1/events", { key, body: [] });
  assert.equal(res.status, 400, res.text);
  const answered = Date.now();
  await eventually(async () => ((await ledger()).rejected.empty_batch ?? 0) === before + 1, {
    ms: 30_000, every: 100, what: "the refusal in the ledger",
  });
  console.log(`refusal → ledger: ${Date.now() - answered} ms (goal ≤ 5,000)`);
});

// End to end: HTTP → built worker in Miniflare (real KV, queues, DLQ) →
// queue consumer → real backend binary → MariaDB shards.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { Backend, startWorker, seedKey, post, newKey, eventually, deadLetters, sql, root, INGEST_TOKEN } from "./harness.mjs";

const run = promisify(execFile);
let backend, mf, envWeb, envMobile, kvDir;
const keys = { web: newKey(), mobile: newKey(), revoked: newKey() };

before(async () => {
  backend = new Backend();
  await backend.setup();
  envWeb = await backend.createEnv("web", "a");
  envMobile = await backend.createEnv("mobile", "b");
  await backend.start();
  // Fast retries: Miniflare honours retry delays, production keeps the 5 s base.
  // KV persisted where scripts/dlq.mjs (wrangler --local) can read it.
  kvDir = await mkdtemp(path.join(tmpdir(), "sluice-e2e-kv-"));
  mf = await startWorker({
    backendUrl: backend.url,
    kvPersist: path.join(kvDir, "v3/kv"),
    vars: { RETRY_BASE_SECONDS: "1", RETRY_MAX_SECONDS: "2" },
  });
  await seedKey(mf, keys.web, { env_id: envWeb, name: "web", status: "active" });
  await seedKey(mf, keys.mobile, { env_id: envMobile, name: "mobile", status: "active" });
  await seedKey(mf, keys.revoked, { env_id: envWeb, name: "old", status: "revoked" });
});

after(async () => {
  await mf?.dispose().catch(() => {});
  await backend?.drop();
  if (kvDir) await rm(kvDir, { recursive: true, force: true });
});

const unique = (label) => `${label}_${Math.random().toString(36).slice(2, 8)}`;

async function landed(shard, envId, name, n, ms = 20_000) {
  return eventually(
    async () => {
      const rows = (await backend.events(shard, envId)).filter((r) => r.name === name);
      return rows.length >= n ? rows : false;
    },
    { ms, what: `${n} × ${name} in shard ${shard}` },
  );
}

test("a valid batch lands in the right shard with the right fields", async () => {
  const name = unique("purchase");
  const sentAt = Date.now() - 10_000; // the client's clock runs 10 s behind
  const res = await post(mf, "/v1/events", {
    key: keys.web,
    headers: { "User-Agent": "e2e-agent/1.0" },
    body: {
      sentAt,
      batch: [
        {
          event: name,
          id: "order-42",
          timestamp: sentAt - 5_000,
          user_id: "u1",
          anonymous_id: "anon-1",
          session_id: "s1",
          properties: { amount: 12.5, items: ["a", "b"] },
          context: { library: "e2e" },
        },
        { event: name, user_id: 7 },
      ],
    },
  });
  assert.equal(res.status, 202, res.text);
  assert.deepEqual(res.json, { accepted: 2 });

  const mobileName = unique("open");
  assert.equal((await post(mf, "/v1/events", { key: keys.mobile, body: { event: mobileName } })).status, 202);

  const rows = await landed("a", envWeb, name, 2);
  assert.equal(rows.length, 2);
  const order = rows.find((r) => r.client_id === "order-42");
  assert.ok(order, "the client id is kept beside its hash");
  assert.equal(order.env_id, envWeb);
  assert.equal(order.user_id, "u1");
  assert.equal(order.anonymous_id, "anon-1");
  assert.equal(order.session_id, "s1");
  assert.deepEqual(order.properties, { amount: 12.5, items: ["a", "b"] });
  assert.equal(order.context.library, "e2e");
  assert.equal(order.context.country, "DE");
  assert.equal(order.context.colo, "FRA");
  assert.equal(order.context.user_agent, "e2e-agent/1.0");
  // Skew-corrected: 5 s before the send, by the edge's clock.
  assert.ok(Math.abs(order.received_at - 5_000 - order.ts) <= 2, `ts ${order.ts} received_at ${order.received_at}`);
  const generated = rows.find((r) => r !== order);
  assert.equal(generated.client_id, null, "a UUIDv7 id needs no client_id");
  assert.equal(generated.hex[12], "7", "UUIDv7");
  assert.equal(generated.user_id, "7");
  assert.equal(generated.ts, generated.received_at);

  await landed("b", envMobile, mobileName, 1);
  assert.equal((await backend.events("a", envMobile)).length, 0, "mobile's events stay out of shard a");
  assert.equal((await backend.events("b", envWeb)).length, 0, "web's events stay out of shard b");
});

test("a missing, unknown or revoked key gets 401 and lands nothing", async () => {
  const name = unique("sneaky");
  for (const key of [undefined, newKey(), keys.revoked]) {
    const res = await post(mf, "/v1/events", { key, body: { event: name } });
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.error, key ? "invalid_api_key" : "missing_api_key");
    assert.equal(res.headers.get("www-authenticate"), "Bearer");
  }
  const query = await post(mf, `/v1/events?key=${newKey()}`, { body: { event: name } });
  assert.equal(query.status, 401);
  // Give the pipeline time to (not) deliver, then look for the name anywhere.
  const marker = unique("marker");
  assert.equal((await post(mf, "/v1/events", { key: keys.web, body: { event: marker } })).status, 202);
  await landed("a", envWeb, marker, 1);
  for (const shard of ["a", "b"]) {
    const found = await sql(`SELECT COUNT(*) FROM event_names WHERE name = '${name}'`, backend.shards[shard]);
    assert.equal(found[0][0], "0");
  }
});

test("bad requests get the documented 4xx with a JSON body", async () => {
  const key = keys.web;
  const cases = [
    ["unsupported content type", { raw: "event=x", headers: { "Content-Type": "application/x-www-form-urlencoded" } }, 415, "unsupported_media_type"],
    ["unsupported encoding", { raw: "{}", headers: { "Content-Encoding": "br" } }, 415, "unsupported_encoding"],
    ["not JSON", { raw: "{nope" }, 400, "invalid_json"],
    ["empty body", { raw: "" }, 400, "invalid_json"],
    ["not an event shape", { raw: "42" }, 400, "invalid_body"],
    ["empty batch", { body: [] }, 400, "empty_batch"],
    ["broken gzip", { raw: "not gzip", headers: { "Content-Encoding": "gzip" } }, 400, "invalid_gzip"],
    ["too many events", { body: Array.from({ length: 1001 }, () => ({ event: "x" })) }, 413, "too_many_events"],
    ["event over 32 KiB", { body: [{ event: "x" }, { event: "x", properties: { blob: "x".repeat(33 * 1024) } }] }, 413, "event_too_large"],
    ["body over 1 MiB", { raw: JSON.stringify([{ event: "x", properties: { blob: "x".repeat(1024 * 1024) } }]) }, 413, "body_too_large"],
    ["gzip bomb", { raw: gzipSync(Buffer.alloc(2 * 1024 * 1024, 32)), headers: { "Content-Encoding": "gzip" } }, 413, "body_too_large"],
  ];
  for (const [what, req, status, code] of cases) {
    const res = await post(mf, "/v1/events", { key, ...req });
    assert.equal(res.status, status, `${what}: ${res.text}`);
    assert.equal(res.json?.error, code, what);
    assert.equal(typeof res.json.message, "string", what);
  }

  const invalid = await post(mf, "/v1/events", { key, body: [{ event: "ok" }, { properties: 1 }, { event: "ok", timestamp: "later" }] });
  assert.equal(invalid.status, 422, invalid.text);
  assert.equal(invalid.json.error, "invalid_events");
  assert.deepEqual(
    invalid.json.details.map((d) => d.index),
    [1, 1, 2],
  );
  assert.match(invalid.json.details[0].reason, /event/);

  const get = await mf.dispatchFetch("http://edge.test/v1/events");
  assert.equal(get.status, 405);
  assert.equal(get.headers.get("allow"), "POST, OPTIONS");
  assert.equal((await get.json()).error, "method_not_allowed");
  const missing = await mf.dispatchFetch("http://edge.test/nope");
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error, "not_found");
  const health = await mf.dispatchFetch("http://edge.test/healthz");
  assert.equal(health.status, 200);
});

test("CORS preflight allows only the configured origins", async () => {
  const preflight = (origin) =>
    mf.dispatchFetch("http://edge.test/v1/events", {
      method: "OPTIONS",
      headers: { Origin: origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type" },
    });
  const ok = await preflight("https://app.example");
  assert.equal(ok.status, 204);
  assert.equal(ok.headers.get("access-control-allow-origin"), "https://app.example");
  assert.match(ok.headers.get("access-control-allow-headers"), /Authorization/);
  const evil = await preflight("https://evil.example");
  assert.equal(evil.headers.get("access-control-allow-origin"), null);
  const res = await post(mf, "/v1/events", { key: keys.web, body: { event: unique("cors") }, headers: { Origin: "https://app.example" } });
  assert.equal(res.status, 202);
  assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
});

test("Prefer: wait and ?wait=1 answer 202 once the queue has the events", async () => {
  const name = unique("waited");
  const a = await post(mf, "/v1/events", { key: keys.web, headers: { Prefer: "wait" }, body: { event: name } });
  assert.equal(a.status, 202, a.text);
  const b = await post(mf, "/v1/events?wait=1", { key: keys.web, body: { event: name } });
  assert.equal(b.status, 202, b.text);
  await landed("a", envWeb, name, 2);
});

test("sendBeacon style: text/plain body and ?key= in the URL", async () => {
  const name = unique("beacon");
  const res = await post(mf, `/v1/events?key=${keys.web}`, {
    raw: JSON.stringify({ batch: [{ event: name, properties: { page: "/pricing" } }], sentAt: new Date().toISOString() }),
    headers: { "Content-Type": "text/plain;charset=UTF-8" },
  });
  assert.equal(res.status, 202, res.text);
  const [row] = await landed("a", envWeb, name, 1);
  assert.deepEqual(row.properties, { page: "/pricing" });
});

test("gzip bodies are inflated", async () => {
  const name = unique("zipped");
  const events = Array.from({ length: 300 }, (_, i) => ({ event: name, properties: { i, pad: "p".repeat(500) } }));
  const raw = gzipSync(JSON.stringify(events));
  assert.ok(raw.length < 20_000);
  const res = await post(mf, "/v1/events", { key: keys.web, raw, headers: { "Content-Encoding": "gzip" } });
  assert.equal(res.status, 202, res.text);
  assert.deepEqual(res.json, { accepted: 300 });
  const rows = await landed("a", envWeb, name, 300);
  assert.deepEqual(
    rows.map((r) => r.properties.i).sort((x, y) => x - y),
    events.map((e) => e.properties.i),
  );
});

test("with the backend down, events are retried and land once it is back, without duplicates", async () => {
  const name = unique("outage");
  await backend.stop();
  try {
    const batch = Array.from({ length: 120 }, (_, i) => ({ event: name, id: `${name}-${i}`, properties: { i } }));
    const res = await post(mf, "/v1/events?wait=1", { key: keys.web, body: batch });
    assert.equal(res.status, 202, res.text);
    await eventually(() => mf.logs.join("").includes('"event":"message_retry"'), { what: "a retry to be logged" });
    await sleep(3_000); // a few failed deliveries
  } finally {
    await backend.start();
  }
  const rows = await landed("a", envWeb, name, 120, 30_000);
  assert.equal(rows.length, 120);
  await sleep(3_000); // nothing more arrives
  const [[total, distinct]] = await sql(
    `SELECT COUNT(*), COUNT(DISTINCT e.client_id) FROM events e JOIN event_names n ON n.id = e.name_id WHERE n.name = '${name}'`,
    backend.shards.a,
  );
  assert.equal(total, "120");
  assert.equal(distinct, "120");
});

test("poison messages reach the dead-letter queue and are stored for replay", async () => {
  const queue = await mf.getQueueProducer("EVENTS");
  // Undecodable: not an array of envelopes.
  await queue.send("this is not JSON", { contentType: "text" });
  // Decodable, but the backend refuses it (unknown environment → 422).
  const poison = [{ id: "poison-1", env_id: 4_000_000_000, name: "x", timestamp: Date.now(), received_at: Date.now(), properties: {}, context: {} }];
  await queue.send(JSON.stringify(poison), { contentType: "text" });

  const letters = await eventually(
    async () => {
      const all = await deadLetters(mf);
      return all.length >= 2 ? all : false;
    },
    { what: "two dead letters in KV" },
  );
  const undecodable = letters.find((l) => l.record.body === "this is not JSON");
  assert.ok(undecodable, JSON.stringify(letters));
  assert.match(undecodable.record.reason, /not a JSON array of envelopes/);
  assert.equal(undecodable.record.source_queue, "sluice-events");
  const refused = letters.find((l) => l.record.body.includes("poison-1"));
  assert.ok(refused, JSON.stringify(letters));
  assert.match(refused.record.reason, /422/);
  assert.deepEqual(JSON.parse(refused.record.body), poison, "the stored body replays as is");
});

test("messages whose retries ran out are stored, and scripts/dlq.mjs replays them", async () => {
  const name = unique("exhausted");
  const now = Date.now();
  const envelopes = [0, 1].map((i) => ({ id: `${name}-${i}`, env_id: envWeb, name, timestamp: now, received_at: now, properties: { i }, context: {} }));
  // What the queue itself moves to the DLQ after max_retries: the original body.
  const dlq = await mf.getQueueProducer("EVENTS_DLQ");
  await dlq.send(JSON.stringify(envelopes), { contentType: "text" });
  const letter = await eventually(
    async () => (await deadLetters(mf)).find((l) => l.record.body.includes(name)),
    { what: "the exhausted message in KV" },
  );
  assert.equal(letter.record.reason, "delivery retries exhausted");

  const dlqCmd = (...args) =>
    run("node", [path.join(root, "scripts/dlq.mjs"), ...args, "--persist-to", kvDir], {
      timeout: 60_000,
      env: { ...process.env, SLUICE_INGEST_TOKEN: INGEST_TOKEN },
    });
  assert.match((await dlqCmd("list")).stdout, new RegExp(letter.key));
  const replay = await dlqCmd("replay", letter.key, "--backend-url", backend.url);
  assert.match(replay.stdout, /replayed 2 envelopes/);
  const rows = await landed("a", envWeb, name, 2);
  assert.deepEqual(rows.map((r) => r.client_id).sort(), envelopes.map((e) => e.id));
  assert.equal((await deadLetters(mf)).some((l) => l.key === letter.key), false, "a replayed letter is deleted");
});

test("past max_retries the queue itself moves a message to the DLQ, where it is counted and stored", async () => {
  // A second worker whose backend never takes events (a proxy drops every
  // /v1/ingest; reports pass, so the DLQ consumer can count the letter),
  // and whose queue gives up after one retry.
  const proxy = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    if (req.url.split("?")[0] === "/v1/ingest") return req.socket.destroy();
    const upstream = await fetch(`${backend.url}${req.url}`, { method: req.method, headers: req.headers, body: Buffer.concat(chunks) });
    res.writeHead(upstream.status, Object.fromEntries(upstream.headers));
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const dead = await startWorker({
    backendUrl: `http://127.0.0.1:${proxy.address().port}`,
    maxRetries: 1,
    vars: { RETRY_BASE_SECONDS: "0", RETRY_MAX_SECONDS: "1" },
  });
  try {
    const key = newKey();
    await seedKey(dead, key, { env_id: envWeb, name: "web", status: "active" });
    const name = unique("stranded");
    assert.equal((await post(dead, "/v1/events?wait=1", { key, body: { event: name } })).status, 202);
    const letter = await eventually(
      async () => (await deadLetters(dead)).find((l) => l.record.body.includes(name)),
      { ms: 30_000, what: "the stranded message in the DLQ store" },
    );
    assert.equal(letter.record.reason, "delivery retries exhausted");
    assert.equal(JSON.parse(letter.record.body)[0].name, name);
    assert.ok(dead.logs.join("").includes('"event":"dead_letter_counted"'), "counted in the ledger before it was stored");
  } finally {
    await dead.dispose();
    proxy.close();
  }
});

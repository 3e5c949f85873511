// Fault scenarios through the whole pipeline (worker in Miniflare → queue →
// consumer → real backend → MariaDB): a steady load of events with unique
// ids, a fault injected mid-load, then the set of accepted ids is compared
// with the rows. Required in every scenario: 0 lost, 0 duplicated.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { promisify } from "node:util";
import { Backend, startWorker, seedKey, newKey, post, sql, eventually, deadLetters, root } from "./harness.mjs";

const run = promisify(execFile);

const EVENTS = Number(process.env.SLUICE_FAULT_EVENTS || 20_000);
const PER_REQUEST = 100;
const backend = new Backend();
const results = [];
let mf, key, envId;

before(async () => {
  await backend.setup();
  envId = await backend.createEnv("faults", "a");
  await backend.start();
  mf = await startWorker({ backendUrl: backend.url, vars: { RETRY_BASE_SECONDS: "1", RETRY_MAX_SECONDS: "2" } });
  key = newKey();
  await seedKey(mf, key, { env_id: envId, name: "faults", status: "active" });
});

after(async () => {
  console.log("\n| scenario | events accepted | rows | lost | duplicated |\n|---|---:|---:|---:|---:|");
  for (const r of results) console.log(`| ${r.scenario} | ${r.accepted} | ${r.rows} | ${r.lost} | ${r.duplicated} |`);
  await mf?.dispose();
  await backend.drop();
});

/** Posts EVENTS events named `name` (8 requests in flight, each worker pausing `paceMs` between
 * requests); `during(done)` runs alongside. Returns accepted ids. */
async function load(name, during, apiKey = key, paceMs = 0) {
  const requests = EVENTS / PER_REQUEST;
  let next = 0;
  let done = 0;
  const accepted = new Set();
  const worker = async () => {
    while (next < requests) {
      const r = next++;
      const body = Array.from({ length: PER_REQUEST }, (_, i) => ({ event: name, id: `${name}-${r * PER_REQUEST + i}`, properties: { r, i } }));
      const res = await post(mf, "/v1/events?wait=1", { key: apiKey, body });
      if (res.status === 202) for (const e of body) accepted.add(e.id);
      done++;
      if (paceMs) await sleep(paceMs);
    }
  };
  await Promise.all([...Array.from({ length: 8 }, worker), during(() => done / requests)]);
  return accepted;
}

async function verify(scenario, name, accepted, shardDb = backend.shards.a, server) {
  try {
    await eventually(
      async () => {
        const [[n]] = await sql(`SELECT COUNT(*) FROM events e JOIN event_names n ON n.id = e.name_id WHERE n.name = '${name}'`, shardDb, server);
        return Number(n) >= accepted.size;
      },
      { ms: 120_000, every: 500, what: `${scenario}: all accepted events landed` },
    );
  } catch (e) {
    const letters = (await deadLetters(mf)).filter(({ record }) => JSON.stringify(record).includes(`${name}-`));
    throw new Error(`${e.message}; ${letters.length} dead letters of this scenario (${JSON.stringify(letters[0]?.record ?? null).slice(0, 800)})`);
  }
  await sleep(2_000); // anything still in flight
  const [[rows, distinct]] = await sql(
    `SELECT COUNT(*), COUNT(DISTINCT e.client_id) FROM events e JOIN event_names n ON n.id = e.name_id WHERE n.name = '${name}'`,
    shardDb,
    server,
  );
  const ids = new Set((await sql(`SELECT e.client_id FROM events e JOIN event_names n ON n.id = e.name_id WHERE n.name = '${name}'`, shardDb, server)).map(([id]) => id));
  const lost = [...accepted].filter((id) => !ids.has(id)).length;
  const result = { scenario, accepted: accepted.size, rows: Number(rows), lost, duplicated: Number(rows) - Number(distinct) };
  results.push(result);
  assert.equal(result.accepted, EVENTS, `${scenario}: the edge accepted every request`);
  assert.equal(result.lost, 0, `${scenario}: lost`);
  assert.equal(result.duplicated, 0, `${scenario}: duplicated`);
}

const when = async (progress, at) => eventually(() => progress() >= at, { ms: 120_000, every: 20, what: `load at ${at}` });

test("backend killed with SIGKILL mid-load, restarted 5 s later", async () => {
  const accepted = await load("sigkill", async (progress) => {
    await when(progress, 0.3);
    await backend.kill();
    await sleep(5_000);
    await backend.start();
  });
  await verify("backend SIGKILL, restart after 5 s", "sigkill", accepted);
});

test("backend SIGTERM during load: in-flight batches finish, nothing half-written", async () => {
  const accepted = await load("sigterm", async (progress) => {
    await when(progress, 0.3);
    await backend.stop();
    await sleep(2_000);
    await backend.start();
  });
  await verify("backend SIGTERM, restart after 2 s", "sigterm", accepted);
});

test("redelivery: the same queue messages delivered twice", async () => {
  const queue = await mf.getQueueProducer("EVENTS");
  const accepted = new Set();
  const now = Date.now();
  for (let m = 0; m < EVENTS / PER_REQUEST; m++) {
    const envelopes = Array.from({ length: PER_REQUEST }, (_, i) => {
      const id = `redelivery-${m * PER_REQUEST + i}`;
      accepted.add(id);
      return { id, env_id: envId, name: "redelivery", timestamp: now, received_at: now, properties: {}, context: {} };
    });
    const body = JSON.stringify(envelopes);
    await queue.send(body, { contentType: "text" });
    await queue.send(body, { contentType: "text" });
  }
  await verify("same queue message delivered twice", "redelivery", accepted);
});

test("poison messages mixed into a healthy stream", async () => {
  const queue = await mf.getQueueProducer("EVENTS");
  const before = (await deadLetters(mf)).length;
  const accepted = await load("poisoned", async (progress) => {
    for (let p = 0; p < 10; p++) {
      await when(progress, p / 10);
      await queue.send(p % 2 ? "not json at all" : JSON.stringify([{ id: `poison-${p}`, env_id: 4_000_000_000, name: "x", timestamp: 0, received_at: 0, properties: {}, context: {} }]), { contentType: "text" });
    }
  });
  await verify("10 poison messages in the stream", "poisoned", accepted);
  await eventually(async () => (await deadLetters(mf)).length - before >= 10, { ms: 60_000, what: "10 dead letters" });
});

test("one shard's server down for 20 s: other environments keep landing, the affected one catches up", async () => {
  const dir = path.join(root, ".dev/mariadb-faults");
  const startSecond = async () =>
    (await run("bash", [path.join(root, "scripts/mysql.sh")], { env: { ...process.env, SLUICE_MYSQL_DIR: dir } })).stdout.trim();
  const second = await startSecond();
  const farDb = `${backend.prefix}_far`;
  try {
    await backend.cli("shard", "add", "far", `${second}/${farDb}`);
    const farEnv = await backend.createEnv("far", "far");
    const farKey = newKey();
    await seedKey(mf, farKey, { env_id: farEnv, name: "far", status: "active" });
    const pid = Number(readFileSync(path.join(dir, "pid"), "utf8"));
    let nearDuringOutage = 0;
    const nearCount = async () => Number((await sql(`SELECT COUNT(*) FROM events e JOIN event_names n ON n.id = e.name_id WHERE n.name = 'near-during'`, backend.shards.a))[0][0]);
    const [near, far] = await Promise.all([
      load("near", async () => {}),
      load(
        "far",
        async (progress) => {
          await when(progress, 0.2);
          process.kill(pid, "SIGTERM");
          await eventually(() => { try { process.kill(pid, 0); return false; } catch { return true; } }, { ms: 30_000, what: "the shard's server to stop" });
          const outageStarted = Date.now();
          // Events for the healthy shard, sent and landed while the other is down.
          for (let r = 0; r < 10; r++) {
            const body = Array.from({ length: PER_REQUEST }, (_, i) => ({ event: "near-during", id: `near-during-${r * PER_REQUEST + i}` }));
            assert.equal((await post(mf, "/v1/events?wait=1", { key, body })).status, 202);
          }
          // The outage lasts until they have landed (at least 20 s): on a loaded machine that can take longer than 15 s.
          await eventually(async () => (await nearCount()) === 1000, { ms: 45_000, what: "healthy shard landing during the outage" });
          nearDuringOutage = await nearCount();
          await sleep(Math.max(0, 20_000 - (Date.now() - outageStarted)));
          await startSecond();
        },
        farKey,
      ),
    ]);
    await verify("shard server down 20 s: environment on it", "far", far, farDb, second);
    await verify("shard server down 20 s: environment on another shard", "near", near);
    assert.equal(nearDuringOutage, 1000, "the healthy shard kept landing during the outage");
    results.push({ scenario: "shard server down 20 s: events sent to the healthy shard during the outage", accepted: 1000, rows: nearDuringOutage, lost: 1000 - nearDuringOutage, duplicated: 0 });
  } finally {
    await sql(`DROP DATABASE IF EXISTS \`${farDb}\``, undefined, second).catch(() => {});
    try {
      process.kill(Number(readFileSync(path.join(dir, "pid"), "utf8")), "SIGTERM");
    } catch {}
  }
});

test("backend commits but the answer is lost: the retried batch lands once", async () => {
  // A proxy in front of the backend that forwards every request, lets the
  // backend commit, and then drops the connection instead of answering for
  // the first 20 requests: the consumer must retry work already stored.
  let dropped = 0;
  const proxy = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const upstream = await fetch(`${backend.url}${req.url}`, { method: req.method, headers: req.headers, body: Buffer.concat(chunks) });
    const body = Buffer.from(await upstream.arrayBuffer());
    if (dropped < 20) {
      dropped++;
      req.socket.destroy();
      return;
    }
    res.writeHead(upstream.status, Object.fromEntries(upstream.headers));
    res.end(body);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const lossy = await startWorker({ backendUrl: `http://127.0.0.1:${proxy.address().port}`, vars: { RETRY_BASE_SECONDS: "1", RETRY_MAX_SECONDS: "2" } });
  try {
    const duplicates = async () => {
      const text = await (await fetch(`${backend.url}/metrics`)).text();
      return Number(/^sluice_events_duplicate_total\{shard="a"\} (\d+)/m.exec(text)?.[1] ?? 0);
    };
    const duplicatesBefore = await duplicates();
    const lossyKey = newKey();
    await seedKey(lossy, lossyKey, { env_id: envId, name: "faults", status: "active" });
    const accepted = new Set();
    const requests = EVENTS / PER_REQUEST;
    for (let r = 0; r < requests; r += 8) {
      await Promise.all(
        Array.from({ length: Math.min(8, requests - r) }, async (_, j) => {
          const body = Array.from({ length: PER_REQUEST }, (_, i) => ({ event: "lost-answer", id: `lost-answer-${(r + j) * PER_REQUEST + i}` }));
          const res = await post(lossy, "/v1/events?wait=1", { key: lossyKey, body });
          if (res.status === 202) for (const e of body) accepted.add(e.id);
        }),
      );
    }
    await verify("backend commits, answer lost (20 times)", "lost-answer", accepted);
    assert.equal(dropped, 20, "the proxy dropped 20 answers");
    assert.ok((await duplicates()) > duplicatesBefore, "retries re-sent stored events, which the backend counted as duplicates");
  } finally {
    await lossy.dispose();
    proxy.close();
  }
});

test("environment migrating during load, then promoted: events written in the window are on both shards", async () => {
  const migEnv = await backend.createEnv("migrating", "a");
  const migKey = newKey();
  await seedKey(mf, migKey, { env_id: migEnv, name: "migrating", status: "active" });
  let migratedAt = 0;
  let promotedAt = 0;
  const rowsOf = async (db) => {
    const rows = await sql(`SELECT e.client_id, UNIX_TIMESTAMP(e.received_at)*1000 FROM events e WHERE e.env_id = ${migEnv}`, db);
    return rows.map(([id, at]) => [String(id), Number(at)]);
  };
  const accepted = await load(
    "migrating",
    async (progress) => {
      await when(progress, 0.25);
      await backend.cli("env", "migrate", "migrating", "--to", "b");
      migratedAt = Date.now();
      // The window must outlast the backend's catalog refresh (1 s) however fast the machine is.
      await eventually(async () => (await rowsOf(backend.shards.b)).length > 0, { ms: 30_000, what: "the first writes to the new shard" });
      await when(progress, 0.75);
      await backend.cli("env", "promote", "migrating");
      promotedAt = Date.now();
    },
    migKey,
    // 8 workers × 25 requests × 500 ms: the load lasts ≥ 12 s, the window ≥ 6 s.
    500,
  );
  let missing = accepted.size;
  try {
    await eventually(
      async () => {
        const ids = new Set([...(await rowsOf(backend.shards.a)), ...(await rowsOf(backend.shards.b))].map(([id]) => id));
        missing = [...accepted].filter((id) => !ids.has(id)).length;
        return missing === 0;
      },
      { ms: 120_000, every: 1_000, what: "every accepted event on one shard or the other" },
    );
  } catch (e) {
    const letters = (await deadLetters(mf)).filter(({ record }) => JSON.stringify(record).includes("migrating-"));
    throw new Error(`${e.message}; ${missing} missing, ${letters.length} dead letters of this scenario (${JSON.stringify(letters[0]?.record ?? null).slice(0, 600)}); backend log tail: ${backend.logs.slice(-5).join("")}`);
  }
  await sleep(2_000); // anything still in flight
  const [a, b] = [await rowsOf(backend.shards.a), await rowsOf(backend.shards.b)];
  const inA = new Map(a);
  const inB = new Map(b);
  const receivedAt = new Map([...a, ...b]);
  const both = [...inA.keys()].filter((id) => inB.has(id));
  const lost = [...accepted].filter((id) => !inA.has(id) && !inB.has(id)).length;
  const duplicated = a.length - inA.size + (b.length - inB.size);
  // The backend re-reads the catalog at least every second: an event that
  // reached the edge 2 s after a switch was written after the backend saw it.
  const settled = 2_000;
  const missingFromB = [...receivedAt].filter(([id, at]) => at >= migratedAt + settled && !inB.has(id)).length;
  const leakedToA = [...receivedAt].filter(([id, at]) => at >= promotedAt + settled && inA.has(id)).length;
  results.push({ scenario: "environment migrating (secondary set) then promoted during load", accepted: accepted.size, rows: receivedAt.size, lost, duplicated });
  results.push({ scenario: "… written in the migration window: on both shards", accepted: both.length, rows: both.length, lost: missingFromB, duplicated: 0 });
  assert.equal(accepted.size, EVENTS, "the edge accepted every request");
  assert.equal(lost, 0, "lost");
  assert.equal(duplicated, 0, "duplicated within a shard");
  assert.equal(missingFromB, 0, "events received after the migration started are all on the new shard");
  assert.equal(leakedToA, 0, "nothing received after the promotion is written to the old primary");
  // The window spans half the requests; how many land inside it depends on the queue's lag.
  assert.ok(both.length >= EVENTS * 0.05, `a real overlap: ${both.length} events on both shards`);
  // What the window missed on the new shard is the history before it, which a backfill copies.
  const onlyA = [...inA.keys()].filter((id) => !inB.has(id));
  assert.ok(onlyA.every((id) => inA.get(id) < migratedAt + settled), "only events from before the migration are on the old shard alone");
});

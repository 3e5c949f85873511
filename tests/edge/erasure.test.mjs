// Erasure end to end (issue 19): events sent through the built worker in
// Miniflare land in MariaDB, a dead letter waits in the edge's KV; then
// `backend user erase web --user-id gone --edge` removes the person's rows,
// takes their envelopes out of the dead letters (scripts/dlq.mjs through
// wrangler's local KV), keeps a record without the id, and the person's next
// event through the edge is dropped at the write and counted as
// `dropped: suppressed` in the delivery ledger.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Backend, startWorker, post, eventually, root } from "./harness.mjs";

const backend = new Backend({
  env: { SLUICE_CATALOG_REFRESH_MS: "300", SLUICE_SHARD_TIMEOUT_MS: "2000", SLUICE_DLQ_SCRIPT: path.join(root, "scripts/dlq.mjs") },
});
let mf, kvDir, key, envId, token;

const worker = () => startWorker({ backendUrl: backend.url, kvPersist: path.join(kvDir, "v3/kv") });

before(async () => {
  await backend.setup();
  kvDir = await mkdtemp(path.join(tmpdir(), "sluice-e2e-erasure-kv-"));
  envId = await backend.createEnv("web", "a");
  const lines = (await backend.cli("key", "create", "web", "--edge", "--persist-to", kvDir)).trim().split("\n");
  key = lines[lines.length - 1].trim();
  token = (await backend.cli("env", "token", "web")).trim().split("\n").pop().trim();
  await backend.start();
  mf = await worker();
});

after(async () => {
  await mf?.dispose().catch(() => {});
  await backend.drop();
  if (kvDir) await rm(kvDir, { recursive: true, force: true });
});

const envelope = (id, user) => ({ id, env_id: envId, name: "e", timestamp: Date.now(), received_at: Date.now(), user_id: user, properties: {}, context: {} });

test("a person's rows, dead letters and later events are gone; the record keeps no id", async () => {
  const from = Date.now() - 60_000;
  const sent = await post(mf, "/v1/events", {
    key,
    body: [{ event: "a", user_id: "gone" }, { event: "b", user_id: "gone" }, { event: "c", user_id: "kept" }],
  });
  assert.equal(sent.status, 202, sent.text);
  await eventually(async () => (await backend.count("a", envId)) === 3, { what: "3 events stored" });

  const letters = await mf.getKVNamespace("DEAD_LETTERS");
  const letter = (body) => JSON.stringify({ reason: "test", attempts: 5, source_queue: "sluice-events", body: JSON.stringify(body) });
  const storedAt = Date.now();
  await letters.put(`dlq/${storedAt}/mixed`, letter([envelope("d1", "gone"), envelope("d2", "kept")]));
  await letters.put(`dlq/${storedAt}/theirs`, letter([envelope("d3", "gone")]));
  // wrangler's local KV and Miniflare share the directory, not a process.
  await mf.dispose();
  mf = null;
  // A retention the edge knows: a rewritten letter keeps the expiry it had.
  await backend.cli("env", "retention", "web", "--days", "7", "--edge", "--persist-to", kvDir);

  const out = await backend.cli("user", "erase", "web", "--user-id", "gone", "--by", "dpo@example", "--edge", "--persist-to", kvDir);
  assert.match(out, /^a: 2 events removed/m, out);
  mf = await worker();
  const after = await mf.getKVNamespace("DEAD_LETTERS");
  const mixed = JSON.parse(await after.get(`dlq/${storedAt}/mixed`));
  assert.deepEqual(JSON.parse(mixed.body).map((e) => e.id), ["d2"]);
  assert.equal(mixed.erased, 1);
  assert.equal(await after.get(`dlq/${storedAt}/theirs`), null, "a letter left empty is deleted");
  assert.equal(await after.get(`retention/${envId}`), "7");
  const { keys } = await after.list({ prefix: "dlq/" });
  assert.deepEqual(
    keys.map((k) => [k.name, k.expiration]),
    [[`dlq/${storedAt}/mixed`, Math.floor(storedAt / 1000) + 7 * 86_400]],
    "the rewritten letter expires with the environment's retention",
  );
  const rows = await backend.events("a", envId);
  assert.deepEqual(rows.map((r) => r.name), ["c"]);

  const records = await backend.cli("user", "erasures", "web");
  assert.match(records, /dpo@example/);
  assert.doesNotMatch(records, /gone/);

  // Suppressed (30 days by default): the next event of theirs is answered and dropped at the write.
  const later = await post(mf, "/v1/events", { key, body: [{ event: "d", user_id: "gone" }, { event: "e", user_id: "kept" }] });
  assert.equal(later.status, 202, later.text);
  const ledger = await eventually(
    async () => {
      const q = new URLSearchParams({ env: "web", from: String(from), to: String(Date.now() + 60_000) });
      const res = await fetch(`${backend.url}/v1/stats/delivery?${q}`, { headers: { Authorization: `Bearer ${token}` } });
      const body = await res.json();
      return body.dropped?.suppressed === 1 && body.in_flight === 0 ? body : false;
    },
    { what: "the suppressed event in the ledger" },
  );
  assert.equal(ledger.accepted, 5, JSON.stringify(ledger));
  assert.deepEqual((await backend.events("a", envId)).map((r) => r.name).sort(), ["c", "e"]);
});

// scripts/key.mjs against wrangler's local KV, read by the built worker:
// a created key is accepted, a revoked one refused once the isolate cache
// expires, and the key itself is stored nowhere in clear.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { root, startWorker, post, eventually, seedKey, newKey, hashKey, Backend } from "./harness.mjs";

const run = promisify(execFile);
const dir = await mkdtemp(path.join(tmpdir(), "sluice-keys-"));
const keyCmd = (...args) => run("node", [path.join(root, "scripts/key.mjs"), ...args, "--persist-to", dir], { timeout: 60_000 });
const backendDir = await mkdtemp(path.join(tmpdir(), "sluice-backend-keys-"));
// `backend key … --edge` runs scripts/key.mjs; the tests may run from anywhere.
process.env.SLUICE_KEY_SCRIPT = path.join(root, "scripts/key.mjs");
let mf, limited, both, backend;

after(async () => {
  await mf?.dispose().catch(() => {});
  await limited?.dispose().catch(() => {});
  await both?.dispose().catch(() => {});
  await backend?.drop().catch(() => {});
  await rm(dir, { recursive: true, force: true });
  await rm(backendDir, { recursive: true, force: true });
});

async function filesUnder(d) {
  const out = [];
  for (const entry of await readdir(d, { withFileTypes: true })) {
    const p = path.join(d, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

test("create, use, list and revoke a key", async () => {
  const { stdout } = await keyCmd("create", "--env-id", "42", "--env-name", "shop");
  const key = stdout.trim();
  assert.match(key, /^sk_[0-9a-f]{32}$/);

  for (const file of await filesUnder(dir)) {
    const content = await readFile(file);
    assert.equal(content.includes(key), false, `${file} holds the key in clear`);
  }

  const { stdout: listed } = await keyCmd("list", "--env-id", "42");
  assert.match(listed, /\tactive\tshop\t/);
  assert.equal((await keyCmd("list", "--env-id", "43")).stdout, "");

  // No backend needed: only the HTTP side is exercised.
  mf = await startWorker({ backendUrl: "http://127.0.0.1:9", kvPersist: path.join(dir, "v3/kv"), vars: { KEY_CACHE_TTL_SECONDS: "2" } });
  const accepted = await post(mf, "/v1/events", { key, body: { event: "k" } });
  assert.equal(accepted.status, 202, accepted.text);

  await keyCmd("revoke", key);
  assert.match((await keyCmd("list", "--env-id", "42")).stdout, /\trevoked\t/);
  // Cached as active for up to KEY_CACHE_TTL_SECONDS, then refused.
  await eventually(async () => (await post(mf, "/v1/events", { key, body: { event: "k" } })).status === 401, {
    ms: 10_000,
    what: "the revoked key to be refused",
  });
});

test("per-key rate limit: 429 with Retry-After past the budget, other keys unaffected, open again next window", async () => {
  const budget = 5;
  limited = await startWorker({ backendUrl: "http://127.0.0.1:9", rateLimit: budget });
  const [busy, quiet] = [newKey(), newKey()];
  await seedKey(limited, busy, { env_id: 1, name: "busy", status: "active" });
  await seedKey(limited, quiet, { env_id: 1, name: "quiet", status: "active" });
  // Start at the beginning of a 10 s window so the whole burst falls in one.
  await sleep(10_000 - (Date.now() % 10_000) + 50);

  const statuses = [];
  for (let i = 0; i < budget; i++) statuses.push((await post(limited, "/v1/events", { key: busy, body: { event: "r" } })).status);
  assert.deepEqual(statuses, Array(budget).fill(202));

  const refused = await post(limited, "/v1/events", { key: busy, body: { event: "r" } });
  assert.equal(refused.status, 429, refused.text);
  assert.equal(refused.json.error, "rate_limited");
  const retryAfter = Number(refused.headers.get("Retry-After"));
  assert.ok(retryAfter >= 1 && retryAfter <= 10, `Retry-After ${retryAfter}`);

  // The Segment endpoints share the key's budget.
  const basic = "Basic " + Buffer.from(`${busy}:`).toString("base64");
  const segment = await post(limited, "/v1/track", { body: { event: "r", userId: "u" }, headers: { Authorization: basic } });
  assert.equal(segment.status, 429, segment.text);

  // An unknown key is still told it is unknown, and another key has its own budget.
  assert.equal((await post(limited, "/v1/events", { key: newKey(), body: { event: "r" } })).status, 401);
  assert.equal((await post(limited, "/v1/events", { key: quiet, body: { event: "r" } })).status, 202);

  await sleep(retryAfter * 1000 + 100);
  const again = await post(limited, "/v1/events", { key: busy, body: { event: "r" } });
  assert.equal(again.status, 202, again.text);
});

test("backend key create/revoke --edge: one command keeps the catalog and the edge's KV together", async () => {
  backend = new Backend();
  await backend.setup();
  const envId = await backend.createEnv("shop", "a");
  const out = await backend.cli("key", "create", "shop", "--edge", "--persist-to", backendDir);
  const key = out.trim().split("\n").at(-1);
  assert.match(key, /^sk_[0-9a-f]{32}$/, out);
  assert.match(await backend.cli("key", "list", "shop"), new RegExp(`${hashKey(key)} .* -\\s*$`, "m"));
  const edgeList = await run("node", [path.join(root, "scripts/key.mjs"), "list", "--env-id", String(envId), "--persist-to", backendDir]);
  assert.match(edgeList.stdout, new RegExp(`^${hashKey(key)}\tactive\tshop\t`, "m"));

  both = await startWorker({ backendUrl: "http://127.0.0.1:9", kvPersist: path.join(backendDir, "v3/kv"), vars: { KEY_CACHE_TTL_SECONDS: "2" } });
  const accepted = await post(both, "/v1/events", { key, body: { event: "k" } });
  assert.equal(accepted.status, 202, accepted.text);

  const revoked = await backend.cli("key", "revoke", key.slice(0, 12), "--edge", "--persist-to", backendDir);
  assert.match(revoked, new RegExp(`revoked ${hashKey(key)}`));
  assert.doesNotMatch(await backend.cli("key", "list", "shop"), new RegExp(`${hashKey(key)} .* -\\s*$`, "m"));
  await eventually(async () => (await post(both, "/v1/events", { key, body: { event: "k" } })).status === 401, {
    ms: 10_000,
    what: "the key revoked with --edge to be refused at the edge",
  });
});

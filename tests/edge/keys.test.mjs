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
import { root, startWorker, post, eventually } from "./harness.mjs";

const run = promisify(execFile);
const dir = await mkdtemp(path.join(tmpdir(), "sluice-keys-"));
const keyCmd = (...args) => run("node", [path.join(root, "scripts/key.mjs"), ...args, "--persist-to", dir], { timeout: 60_000 });
let mf;

after(async () => {
  await mf?.dispose().catch(() => {});
  await rm(dir, { recursive: true, force: true });
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

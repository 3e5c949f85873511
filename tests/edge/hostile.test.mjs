// The hostile corpus (tests/hostile/edge.jsonl) against the built worker in
// Miniflare: every request gets its documented status, every error a JSON
// {error, message} body, nothing a 5xx, and the worker keeps serving.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { Backend, startWorker, seedKey, newKey, root } from "./harness.mjs";

const backend = new Backend();
let mf, key, envId;

before(async () => {
  await backend.setup();
  envId = await backend.createEnv("hostile", "a");
  await backend.start();
  mf = await startWorker({ backendUrl: backend.url });
  key = newKey();
  await seedKey(mf, key, { env_id: envId, name: "hostile", status: "active" });
});

after(async () => {
  await mf?.dispose();
  await backend.drop();
});

function generate(kind) {
  const deep = (n) => "[".repeat(n) + "]".repeat(n);
  switch (kind) {
    case "gzip_bomb":
      return Buffer.concat(Array.from({ length: 100 }, () => gzipSync(Buffer.alloc(10 << 20), { level: 9 })));
    case "truncated_gzip": {
      const full = gzipSync(Buffer.from(JSON.stringify({ event: "x" })));
      return full.subarray(0, full.length >> 1);
    }
    case "invalid_utf8":
      return Buffer.concat([Buffer.from('{"event":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
    case "deep_properties":
      return `{"event":"x","properties":{"a":${deep(10_000)}}}`;
    case "deep_array":
      return deep(10_000);
    case "big_event":
      return JSON.stringify({ event: "x", properties: { blob: "x".repeat(40 * 1024) } });
    case "big_string":
      return JSON.stringify({ event: "x", properties: { blob: "x".repeat(5 << 20) } });
    case "too_many":
      return JSON.stringify(Array.from({ length: 1001 }, () => ({ event: "x" })));
    case "many_events":
      return JSON.stringify(Array.from({ length: 100_000 }, () => ({ event: "x" })));
    case "over_limit":
      return " ".repeat((1 << 20) + 10);
    default:
      throw new Error(`unknown generator ${kind}`);
  }
}

test("hostile requests get their documented status and the worker keeps serving", async () => {
  const corpus = readFileSync(path.join(root, "tests/hostile/edge.jsonl"), "utf8").split("\n").filter((l) => l.trim());
  const failures = [];
  for (const line of corpus) {
    const c = JSON.parse(line);
    const fill = (s) => s.replaceAll("{KEY}", key);
    const headers = Object.fromEntries(Object.entries(c.headers).map(([k, v]) => [k, fill(v)]));
    const body = c.generate ? generate(c.generate) : c.body !== undefined ? fill(c.body) : undefined;
    let res;
    try {
      res = await mf.dispatchFetch(`http://edge.test${fill(c.path)}`, {
        method: c.method,
        headers,
        body: ["GET", "HEAD"].includes(c.method) ? undefined : body,
        cf: { country: "DE", colo: "FRA" },
      });
    } catch (e) {
      failures.push(`${c.name}: no answer: ${e.message}`);
      continue;
    }
    const text = await res.text();
    if (res.status !== c.expect) failures.push(`${c.name}: expected ${c.expect}, got ${res.status}: ${text.slice(0, 200)}`);
    if (res.status >= 500) failures.push(`${c.name}: 5xx`);
    if (res.status >= 400) {
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {}
      if (typeof json?.error !== "string" || !json?.message) failures.push(`${c.name}: error body is not {error, message}: ${text.slice(0, 120)}`);
      if (c.error && json?.error !== c.error) failures.push(`${c.name}: expected error ${c.error}, got ${json?.error}: ${text.slice(0, 200)}`);
    }
  }
  assert.deepEqual(failures, [], `${failures.length} of ${corpus.length} cases failed`);
  assert.ok(corpus.length >= 60, `corpus has ${corpus.length} cases`);
  console.log(`${corpus.length} hostile requests answered as documented`);

  const ok = await mf.dispatchFetch("http://edge.test/v1/events", {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ event: "after-the-storm" }),
  });
  assert.equal(ok.status, 202, "still serving");
});

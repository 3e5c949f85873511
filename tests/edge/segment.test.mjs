// The Segment-compatible API end to end: the real @segment/analytics-node SDK
// (unmodified, pointed at the Miniflare worker with its `host` option) →
// built worker → queue → real backend → MariaDB; plus the HTTP contract the
// SDKs rely on (auth forms, partial batches, limits, settings, CORS).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Analytics } from "@segment/analytics-node";
import { chromium } from "playwright-core";
import { Backend, SEGMENT_TYPES, serveAnalyticsPage, startWorker, seedKey, post, newKey, eventually } from "./harness.mjs";

let backend, mf, edgeUrl, envSeg, envOther, pages, pageOrigin;
const keys = { seg: newKey(), other: newKey(), revoked: newKey() };

before(async () => {
  backend = new Backend();
  await backend.setup();
  envSeg = await backend.createEnv("segment", "a");
  envOther = await backend.createEnv("segment-other", "b");
  await backend.start();
  pages = await serveAnalyticsPage("Sluice Segment test");
  pageOrigin = `http://127.0.0.1:${pages.address().port}`;
  mf = await startWorker({
    backendUrl: backend.url,
    vars: { RETRY_BASE_SECONDS: "1", RETRY_MAX_SECONDS: "2", ALLOWED_ORIGINS: `https://app.example,${pageOrigin}` },
  });
  edgeUrl = new URL(await mf.ready).origin;
  await seedKey(mf, keys.seg, { env_id: envSeg, name: "segment", status: "active" });
  await seedKey(mf, keys.other, { env_id: envOther, name: "other", status: "active" });
  await seedKey(mf, keys.revoked, { env_id: envSeg, name: "old", status: "revoked" });
});

after(async () => {
  pages?.close();
  await mf?.dispose().catch(() => {});
  await backend?.drop();
});

const basic = (key) => "Basic " + Buffer.from(`${key}:`).toString("base64");

const rows = (shard, envId, where) => backend.segmentRows(shard, envId, where);

const count = (shard, envId) => backend.count(shard, envId);

test("analytics-node: 5,000 mixed calls land exactly once each, properties and traits intact; a retried batch adds nothing", async () => {
  const N = 5000;
  const analytics = new Analytics({
    writeKey: keys.seg,
    host: edgeUrl,
    flushAt: 100,
    flushInterval: 200,
    maxRetries: 3,
  });
  const requests = [];
  const statuses = [];
  const failures = [];
  analytics.on("http_request", (r) => requests.push(r));
  analytics.on("http_response", (r) => statuses.push(r.status));
  analytics.on("error", (e) => failures.push(e));
  const expected = new Map(); // messageId → what we sent
  const done = (sent) => (err, ctx) => {
    if (err) failures.push(err);
    else expected.set(ctx.event.messageId, sent);
  };
  for (let i = 0; i < N; i++) {
    const userId = `user-${i % 97}`;
    switch (i % 5) {
      case 0: {
        const properties = { i, label: `item-${i}`, price: i / 4, tags: ["a", "é"], nested: { deep: { i } } };
        analytics.track({ userId, event: `Product Viewed ${i % 7}`, properties }, done({ type: "track", name: `Product Viewed ${i % 7}`, properties }));
        break;
      }
      case 1: {
        const traits = { i, email: `u${i}@example.com`, plan: i % 2 ? "pro" : "free" };
        analytics.identify({ userId, traits }, done({ type: "identify", name: "identify", traits }));
        break;
      }
      case 2: {
        const properties = { i, url: `https://shop.example/p/${i}` };
        analytics.page({ anonymousId: `anon-${i}`, name: "Product", category: "Shop", properties }, done({ type: "page", name: "Product", properties: { ...properties, name: "Product", category: "Shop" } }));
        break;
      }
      case 3: {
        const traits = { i, employees: i % 50 };
        analytics.group({ userId, groupId: `org-${i % 13}`, traits }, done({ type: "group", name: "group", traits, group_id: `org-${i % 13}` }));
        break;
      }
      default:
        analytics.alias({ userId, previousId: `anon-${i}` }, done({ type: "alias", name: "alias", previous_id: `anon-${i}` }));
    }
  }
  await analytics.closeAndFlush({ timeout: 120_000 });
  assert.deepEqual(failures, [], "the SDK reports no delivery failure");
  assert.equal(expected.size, N);
  assert.ok(requests.length >= N / 100, `${requests.length} requests`);
  assert.ok(statuses.every((s) => s === 200), `statuses: ${[...new Set(statuses)]}`);
  assert.match(requests[0].headers.Authorization, /^Basic /, "the SDK authenticates with HTTP Basic");
  assert.ok(requests[0].url.endsWith("/v1/batch"));

  const landed = await eventually(
    async () => {
      const n = await count("a", envSeg);
      return n >= N ? n : false;
    },
    { ms: 120_000, every: 500, what: `${N} Segment messages in shard a` },
  );
  assert.equal(landed, N);
  const stored = await rows("a", envSeg);
  const byId = new Map(stored.map((r) => [r.client_id, r]));
  assert.equal(byId.size, N, "one row per messageId");
  for (const [messageId, sent] of expected) {
    const row = byId.get(messageId);
    assert.ok(row, `messageId ${messageId} landed`);
    assert.equal(row.type, sent.type, messageId);
    assert.equal(row.name, sent.name, messageId);
    if (sent.properties) assert.deepEqual(row.properties, sent.properties, messageId);
    if (sent.traits) assert.deepEqual(row.traits, sent.traits, messageId);
    if (sent.group_id) assert.equal(row.group_id, sent.group_id);
    if (sent.previous_id) assert.equal(row.previous_id, sent.previous_id);
    assert.equal(row.context.library.name, "@segment/analytics-node");
    assert.ok(Math.abs(row.ts - row.received_at) < 60_000, "skew-corrected timestamp near the receive time");
  }

  // A retry of a delivered batch (same messageIds): 200, and no new rows.
  const again = requests[3];
  const res = await fetch(again.url, { method: "POST", headers: again.headers, body: again.body });
  assert.equal(res.status, 200, await res.text());
  const marker = await fetch(`${edgeUrl}/v1/track`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: basic(keys.seg) },
    body: JSON.stringify({ userId: "u", event: "marker", messageId: "retry-marker" }),
  });
  assert.equal(marker.status, 200);
  await eventually(async () => (await rows("a", envSeg, "e.client_id = 'retry-marker'")).length === 1, { what: "the marker" });
  await sleep(1500);
  assert.equal(await count("a", envSeg), N + 1, "the resent batch added no row");
});

test("browser form: text/plain to the short paths with writeKey in the body", async () => {
  const sentAt = new Date(Date.now() - 3_600_000); // the browser's clock is an hour behind
  const calls = [
    ["/v1/t", { type: "track", event: "Signed Up", anonymousId: "b-1", properties: { plan: "pro" }, messageId: "ajs-next-t1" }],
    ["/v1/p", { type: "page", name: "Home", category: "Landing", anonymousId: "b-1", properties: { path: "/" }, messageId: "ajs-next-p1" }],
    ["/v1/s", { type: "screen", name: "Cart", userId: "u-9", messageId: "ajs-next-s1" }],
    ["/v1/i", { type: "identify", userId: "u-9", traits: { email: "u9@example.com" }, messageId: "ajs-next-i1" }],
    ["/v1/g", { type: "group", userId: "u-9", groupId: "g-1", traits: { name: "Acme" }, messageId: "ajs-next-g1" }],
    ["/v1/a", { type: "alias", userId: "u-9", previousId: "b-1", messageId: "ajs-next-a1" }],
  ];
  for (const [path, msg] of calls) {
    const body = {
      ...msg,
      writeKey: keys.other,
      timestamp: new Date(sentAt.getTime() - 2_000).toISOString(),
      sentAt: sentAt.toISOString(),
      integrations: { "Segment.io": true },
      context: { library: { name: "analytics.js", version: "next-1.84.3" }, userAgent: "Mozilla/5.0 test" },
      _metadata: { bundled: ["Segment.io"], unbundled: [] },
    };
    const res = await post(mf, path, { raw: JSON.stringify(body), headers: { "Content-Type": "text/plain" } });
    assert.equal(res.status, 200, `${path}: ${res.text}`);
    assert.deepEqual(res.json, { success: true, accepted: 1 });
  }
  const landed = await eventually(async () => {
    const r = await rows("b", envOther, "e.client_id LIKE 'ajs-next-%'");
    return r.length === calls.length ? r : false;
  }, { what: "the six browser-form messages" });
  const by = Object.fromEntries(landed.map((r) => [r.type, r]));
  assert.deepEqual(Object.keys(by).sort(), [...SEGMENT_TYPES].sort());
  assert.equal(by.track.name, "Signed Up");
  assert.deepEqual(by.track.properties, { plan: "pro" });
  assert.equal(by.page.name, "Home");
  assert.deepEqual(by.page.properties, { path: "/", name: "Home", category: "Landing" });
  assert.equal(by.screen.name, "Cart");
  assert.deepEqual(by.identify.traits, { email: "u9@example.com" });
  assert.equal(by.group.group_id, "g-1");
  assert.equal(by.alias.previous_id, "b-1");
  assert.equal(by.track.context.user_agent, "Mozilla/5.0 test");
  assert.equal(by.track.context.country, "DE");
  assert.equal(by.track.context.integrations, undefined, "integrations are not stored");
  for (const r of landed) {
    // Called 2 s before the send, by the browser's clock: 2 s before receipt, by ours.
    assert.ok(Math.abs(r.received_at - 2_000 - r.ts) <= 5, `${r.type}: ts ${r.ts}, received ${r.received_at}`);
  }
});

test("auth: Basic, body writeKey; missing, unknown and revoked keys get 401", async () => {
  const msg = { userId: "u", event: "auth-check" };
  const ok = await post(mf, "/v1/track", { body: msg, headers: { Authorization: basic(keys.seg) } });
  assert.equal(ok.status, 200, ok.text);
  for (const [headers, body, code] of [
    [{}, msg, "missing_api_key"],
    [{ Authorization: basic(newKey()) }, msg, "invalid_api_key"],
    [{ Authorization: basic(keys.revoked) }, msg, "invalid_api_key"],
    [{}, { ...msg, writeKey: keys.revoked }, "invalid_api_key"],
  ]) {
    const res = await post(mf, "/v1/track", { body, headers });
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.error, code);
  }
});

test("a batch lands its valid messages and lists the rejected ones; limits give 400", async () => {
  const res = await post(mf, "/v1/batch", {
    headers: { Authorization: basic(keys.other) },
    body: {
      context: { app: { name: "shared" } },
      batch: [
        { type: "track", event: "partial-ok", userId: "u", messageId: "partial-1" },
        { type: "track", userId: "u", messageId: "partial-2" },
        { type: "identify", messageId: "partial-3" },
        { type: "track", event: "partial-ok", userId: "u", messageId: "partial-4", properties: { blob: "x".repeat(33 * 1024) } },
        { type: "identify", userId: "u", messageId: "partial-5" },
      ],
    },
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.accepted, 2);
  assert.equal(res.json.rejected, 3);
  assert.deepEqual(res.json.details.map((d) => d.index), [1, 2, 3]);
  assert.match(res.json.details[0].reason, /event/);
  const landed = await eventually(async () => {
    const r = await rows("b", envOther, "e.client_id LIKE 'partial-%'");
    return r.length >= 2 ? r : false;
  }, { what: "the valid part of the batch" });
  assert.deepEqual(landed.map((r) => r.client_id).sort(), ["partial-1", "partial-5"]);
  assert.equal(landed[0].context.app.name, "shared");
  assert.ok(mf.logs.join("").includes("segment_messages_rejected"), "a log line counts the rejects");

  const allBad = await post(mf, "/v1/batch", { headers: { Authorization: basic(keys.other) }, body: { batch: [{ type: "track", userId: "u" }] } });
  assert.equal(allBad.status, 400);
  assert.equal(allBad.json.error, "invalid_events");

  const big = { batch: Array.from({ length: 20 }, (_, i) => ({ type: "track", event: "big", userId: "u", properties: { blob: "y".repeat(30_000), i } })) };
  const tooBig = await post(mf, "/v1/batch", { headers: { Authorization: basic(keys.other) }, body: big });
  assert.equal(tooBig.status, 400, "over 500 KB");
  assert.equal(tooBig.json.error, "body_too_large");
  const oneTooBig = await post(mf, "/v1/track", {
    headers: { Authorization: basic(keys.other) },
    body: { event: "big", userId: "u", properties: { blob: "z".repeat(33 * 1024) } },
  });
  assert.equal(oneTooBig.status, 400, "over 32 KB");
  assert.equal(oneTooBig.json.error, "invalid_events");
  const malformed = await post(mf, "/v1/batch", { headers: { Authorization: basic(keys.other) }, raw: "{not json" });
  assert.equal(malformed.status, 400);
});

test("settings for the browser SDK point back at this edge; unknown key 404; CORS", async () => {
  const res = await mf.dispatchFetch(`http://edge.test:8443/v1/projects/${keys.seg}/settings`, { headers: { Origin: "https://app.example" } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
  const doc = await res.json();
  assert.equal(doc.integrations["Segment.io"].apiKey, keys.seg);
  assert.equal(doc.integrations["Segment.io"].apiHost, "edge.test:8443/v1");
  assert.equal(doc.integrations["Segment.io"].protocol, "http");
  const unknown = await mf.dispatchFetch(`http://edge.test/v1/projects/${newKey()}/settings`);
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error, "not_found");
  const revoked = await mf.dispatchFetch(`http://edge.test/v1/projects/${keys.revoked}/settings`);
  assert.equal(revoked.status, 404);

  const preflight = await mf.dispatchFetch("http://edge.test/v1/t", {
    method: "OPTIONS",
    headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type,x-retry-count" },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), "https://app.example");
  assert.match(preflight.headers.get("access-control-allow-headers"), /Authorization/);
  assert.match(preflight.headers.get("access-control-allow-headers"), /X-Retry-Count/);
  const get = await mf.dispatchFetch("http://edge.test/v1/batch");
  assert.equal(get.status, 405);
});

test("analytics-next in headless Chromium: loads its settings from the edge, page and track land", async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    page.on("pageerror", (e) => problems.push(String(e)));
    const hosts = new Set();
    page.on("request", (r) => hosts.add(new URL(r.url()).origin));
    page.on("response", (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.url()}`));
    await page.goto(`${pageOrigin}/`);
    const sent = await page.evaluate(
      async ({ writeKey, cdnURL }) => {
        const [analytics] = await window.AnalyticsBrowser.load({ writeKey, cdnURL });
        const p = await analytics.page("Docs", "Intro", { section: "start" });
        const t = await analytics.track("Button Clicked", { button: "buy", price: 9.5 });
        return [p, t].map((ctx) => ({
          messageId: ctx.event.messageId,
          type: ctx.event.type,
          anonymousId: ctx.event.anonymousId,
          failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null,
        }));
      },
      { writeKey: keys.other, cdnURL: edgeUrl },
    );
    assert.deepEqual(sent.map((s) => s.failed), [null, null], JSON.stringify(sent));
    assert.deepEqual(problems, [], "no console errors");
    assert.deepEqual([...hosts].sort(), [edgeUrl, pageOrigin].sort(), "nothing but the page and the edge was contacted");
    const ids = sent.map((s) => `'${s.messageId}'`).join(",");
    const landed = await eventually(async () => {
      const r = await rows("b", envOther, `e.client_id IN (${ids})`);
      return r.length === 2 ? r : false;
    }, { what: "the browser's page and track" });
    const by = Object.fromEntries(landed.map((r) => [r.type, r]));
    assert.equal(by.page.name, "Intro");
    assert.equal(by.page.properties.category, "Docs");
    assert.equal(by.page.properties.section, "start");
    assert.equal(by.page.properties.url, `${pageOrigin}/`);
    assert.equal(by.track.name, "Button Clicked");
    assert.deepEqual(by.track.properties, { button: "buy", price: 9.5 });
    assert.equal(by.track.anonymous_id, sent[1].anonymousId);
    assert.equal(by.track.context.library.name, "analytics.js");
    assert.match(by.track.context.user_agent, /Chrome/);
    assert.ok(Math.abs(by.track.ts - by.track.received_at) < 10_000);
  } finally {
    await browser.close();
  }
});

// Direct ingest end to end: the real SDKs pointed at the BACKEND itself (no
// worker in between). @segment/analytics-node with `host: backend.url`;
// @segment/analytics-next in headless Chromium from a page on another origin,
// loading its settings from the backend; /v1/events in the browser's
// sendBeacon form and gzipped. The backend answers after the commit, so
// every check of the shard runs right after the answer, never "eventually".
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { Analytics } from "@segment/analytics-node";
import { chromium } from "playwright-core";
import { Backend, SEGMENT_TYPES, serveAnalyticsPage, sql } from "./harness.mjs";

const OTHER_ORIGIN = "https://app.example";
let backend, pages, pageOrigin, envNode, envWeb, keyNode, keyWeb;

before(async () => {
  // The page's server first: its origin goes into the backend's CORS list.
  pages = await serveAnalyticsPage("Sluice direct test");
  pageOrigin = `http://127.0.0.1:${pages.address().port}`;
  backend = new Backend({ env: { SLUICE_ALLOWED_ORIGINS: `${OTHER_ORIGIN},${pageOrigin}` } });
  await backend.setup();
  envNode = await backend.createEnv("direct-node", "a");
  envWeb = await backend.createEnv("direct-web", "b");
  keyNode = await backend.createKey("direct-node");
  keyWeb = await backend.createKey("direct-web");
  assert.match(keyNode, /^sk_[0-9a-f]{32}$/);
  await backend.start();
}, { timeout: 120_000 });

after(async () => {
  pages?.close();
  await backend?.drop();
}, { timeout: 60_000 });

const rows = (shard, envId, where) => backend.segmentRows(shard, envId, where);

/** Client ids stored more than once in a shard's environment. */
async function duplicates(shard, envId) {
  return sql(
    `SELECT client_id, COUNT(*) FROM events WHERE env_id = ${Number(envId)} AND client_id IS NOT NULL
      GROUP BY client_id HAVING COUNT(*) > 1`,
    backend.shards[shard],
  );
}

const quoted = (ids) => ids.map((id) => `'${id.replace(/'/g, "''")}'`).join(",");

test("analytics-node → backend: 600 messages of every type, each messageId stored once as soon as closeAndFlush returns", { timeout: 120_000 }, async () => {
  const N = 600;
  const analytics = new Analytics({ writeKey: keyNode, host: backend.url, flushAt: 40, flushInterval: 100, maxRetries: 3 });
  const requests = [];
  const statuses = [];
  const failures = [];
  analytics.on("http_request", (r) => requests.push(r));
  analytics.on("http_response", (r) => statuses.push(r.status));
  analytics.on("error", (e) => failures.push(e));
  const expected = new Map(); // messageId → what was sent
  const run = `node-${Date.now().toString(36)}`;
  for (let i = 0; i < N; i++) {
    const messageId = `${run}-${i}`;
    const userId = `user-${i % 31}`;
    const done = (sent) => (err) => (err ? failures.push(err) : expected.set(messageId, sent));
    switch (SEGMENT_TYPES[i % SEGMENT_TYPES.length]) {
      case "track": {
        const properties = { i, sku: `sku-${i}`, price: i / 4, tags: ["a", "é"], nested: { deep: { i } } };
        analytics.track({ messageId, userId, event: `Order Completed ${i % 5}`, properties }, done({ type: "track", name: `Order Completed ${i % 5}`, properties }));
        break;
      }
      case "identify": {
        const traits = { i, email: `u${i}@example.com` };
        analytics.identify({ messageId, userId, traits }, done({ type: "identify", name: "identify", traits }));
        break;
      }
      case "page": {
        const properties = { i, url: `https://shop.example/p/${i}` };
        analytics.page({ messageId, anonymousId: `anon-${i}`, name: "Product", category: "Shop", properties }, done({ type: "page", name: "Product", properties: { ...properties, name: "Product", category: "Shop" } }));
        break;
      }
      case "screen": {
        const properties = { i };
        analytics.screen({ messageId, userId, name: "Cart", category: "App", properties }, done({ type: "screen", name: "Cart", properties: { ...properties, name: "Cart", category: "App" } }));
        break;
      }
      case "group": {
        const traits = { i, employees: i % 50 };
        analytics.group({ messageId, userId, groupId: `org-${i % 7}`, traits }, done({ type: "group", name: "group", traits, group_id: `org-${i % 7}` }));
        break;
      }
      default:
        analytics.alias({ messageId, userId, previousId: `anon-${i}` }, done({ type: "alias", name: "alias", previous_id: `anon-${i}` }));
    }
  }
  await analytics.closeAndFlush({ timeout: 60_000 });

  // Right after the flush, with no waiting: a 200 from the backend means committed.
  const stored = await rows("a", envNode);
  assert.deepEqual(failures, [], "the SDK reports no delivery failure");
  assert.equal(expected.size, N);
  assert.ok(requests.length >= N / 40, `${requests.length} requests`);
  assert.ok(requests.every((r) => r.url === `${backend.url}/v1/batch`), `the SDK sent to the backend: ${requests[0]?.url}`);
  assert.ok(statuses.length === requests.length && statuses.every((s) => s === 200), `statuses: ${[...new Set(statuses)]}`);
  const byId = new Map(stored.map((r) => [r.client_id, r]));
  assert.equal(stored.length, N, "as many rows as messages, right after closeAndFlush");
  assert.deepEqual([...byId.keys()].sort(), [...expected.keys()].sort(), "exactly the messageIds sent");
  assert.deepEqual(await duplicates("a", envNode), [], "no messageId stored twice");
  assert.deepEqual([...new Set(stored.map((r) => r.type))].sort(), [...SEGMENT_TYPES].sort(), "every message type");
  for (const [messageId, sent] of expected) {
    const row = byId.get(messageId);
    assert.equal(row.type, sent.type, messageId);
    assert.equal(row.name, sent.name, messageId);
    if (sent.properties) assert.deepEqual(row.properties, sent.properties, messageId);
    if (sent.traits) assert.deepEqual(row.traits, sent.traits, messageId);
    if (sent.group_id) assert.equal(row.group_id, sent.group_id, messageId);
    if (sent.previous_id) assert.equal(row.previous_id, sent.previous_id, messageId);
    assert.equal(row.context.library.name, "@segment/analytics-node");
    assert.ok(Math.abs(row.ts - row.received_at) < 60_000, "skew-corrected timestamp near the receive time");
  }

  // The SDK's retry of a delivered batch (same body, same messageIds): 200, no new row.
  const again = requests[2];
  const res = await fetch(again.url, { method: "POST", headers: again.headers, body: again.body });
  assert.equal(res.status, 200, await res.text());
  assert.equal((await rows("a", envNode)).length, N, "the resent batch added no row");
  assert.deepEqual(await duplicates("a", envNode), []);
});

test("settings: apiHost points back at the backend; CORS for listed origins only", { timeout: 120_000 }, async () => {
  const res = await fetch(`${backend.url}/v1/projects/${keyWeb}/settings`, { headers: { Origin: pageOrigin } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("access-control-allow-origin"), pageOrigin);
  const doc = await res.json();
  assert.equal(doc.integrations["Segment.io"].apiKey, keyWeb);
  assert.equal(doc.integrations["Segment.io"].apiHost, `127.0.0.1:${backend.port}/v1`);
  assert.equal(doc.integrations["Segment.io"].protocol, "http");
  assert.equal((await fetch(`${backend.url}/v1/projects/sk_${"0".repeat(32)}/settings`)).status, 404);

  const preflight = (origin) =>
    fetch(`${backend.url}/v1/t`, {
      method: "OPTIONS",
      headers: { Origin: origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type" },
    });
  const ok = await preflight(pageOrigin);
  assert.equal(ok.status, 204);
  assert.equal(ok.headers.get("access-control-allow-origin"), pageOrigin);
  assert.match(ok.headers.get("access-control-allow-headers"), /Authorization/);
  const other = await preflight("https://evil.example");
  assert.equal(other.headers.get("access-control-allow-origin"), null, "an unlisted origin gets no CORS grant");
});

test("analytics-next in headless Chromium, page on another origin → backend: settings, page/track/identify/group/alias stored once each; a sendBeacon and a preflighted fetch to /v1/events too", { timeout: 120_000 }, async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    timeout: 30_000,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(30_000);
    const problems = [];
    page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    page.on("pageerror", (e) => problems.push(String(e)));
    const hosts = new Set();
    page.on("request", (r) => hosts.add(new URL(r.url()).origin));
    const answered = []; // [method, path, status] of every backend response
    const posted = []; // the SDK's message bodies
    page.on("response", (r) => {
      const u = new URL(r.url());
      if (u.origin === backend.url) answered.push([r.request().method(), u.pathname, r.status()]);
      if (u.origin === backend.url && /^\/v1\/[ptiga]$/.test(u.pathname)) posted.push(JSON.parse(r.request().postData()));
      if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
    });
    await page.goto(`${pageOrigin}/`);
    assert.notEqual(pageOrigin, backend.url, "the page is on another origin than the backend");

    const sent = await page.evaluate(
      async ({ writeKey, cdnURL }) => {
        const [analytics] = await window.AnalyticsBrowser.load({ writeKey, cdnURL });
        const calls = [
          await analytics.page("Docs", "Intro", { section: "start" }),
          await analytics.track("Button Clicked", { button: "buy", price: 9.5 }),
          await analytics.identify("user-7", { email: "u7@example.com" }),
          await analytics.group("org-3", { name: "Acme" }),
          await analytics.alias("user-7-new", "user-7"),
        ];
        return calls.map((ctx) => ({
          messageId: ctx.event.messageId,
          type: ctx.event.type,
          anonymousId: ctx.event.anonymousId,
          failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null,
        }));
      },
      { writeKey: keyWeb, cdnURL: backend.url },
    );
    assert.deepEqual(sent.map((s) => s.failed), Array(sent.length).fill(null), JSON.stringify(sent));
    assert.deepEqual(sent.map((s) => s.type), ["page", "track", "identify", "group", "alias"]);
    // Each call resolved after its fetch answered: each answer means stored.
    const delivered = answered.filter(([m, p]) => m === "POST" && /^\/v1\/[ptiga]$/.test(p));
    assert.deepEqual(delivered.map(([, p, s]) => [p, s]), [["/v1/p", 200], ["/v1/t", 200], ["/v1/i", 200], ["/v1/g", 200], ["/v1/a", 200]]);
    assert.ok(answered.some(([m, p, s]) => m === "GET" && p === `/v1/projects/${keyWeb}/settings` && s === 200), "settings came from the backend");
    const ids = sent.map((s) => s.messageId);
    const landed = await rows("b", envWeb, `e.client_id IN (${quoted(ids)})`);
    assert.deepEqual(landed.map((r) => r.client_id).sort(), [...ids].sort(), "every messageId stored, once");
    assert.deepEqual(await duplicates("b", envWeb), []);
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
    assert.equal(by.identify.user_id, "user-7");
    assert.deepEqual(by.identify.traits, { email: "u7@example.com" });
    assert.equal(by.group.group_id, "org-3");
    assert.deepEqual(by.group.traits, { name: "Acme" });
    assert.equal(by.alias.previous_id, "user-7");
    // Each row carries the ids of the body the SDK posted (analytics.js posts
    // the alias with the current user's id as userId, not `to`).
    assert.deepEqual(posted.map((m) => m.messageId).sort(), [...ids].sort());
    for (const m of posted) {
      const row = landed.find((r) => r.client_id === m.messageId);
      assert.equal(row.type, m.type, m.messageId);
      assert.equal(row.user_id, m.userId ?? null, `${m.type} userId`);
      assert.equal(row.anonymous_id, m.anonymousId ?? null, `${m.type} anonymousId`);
      assert.equal(row.previous_id, m.previousId ?? null, `${m.type} previousId`);
      assert.equal(row.group_id, m.groupId ?? null, `${m.type} groupId`);
    }

    // /v1/events from the page: navigator.sendBeacon (text/plain, key in the
    // query, no preflight) and a fetch with Authorization (preflighted).
    const beaconName = `beacon-${Date.now()}`;
    const beaconAnswer = page.waitForResponse((r) => r.url().startsWith(`${backend.url}/v1/events?`));
    const queued = await page.evaluate(
      ({ url, name }) => navigator.sendBeacon(url, JSON.stringify({ batch: [{ event: name, id: name, properties: { via: "beacon" } }], sentAt: new Date().toISOString() })),
      { url: `${backend.url}/v1/events?key=${keyWeb}`, name: beaconName },
    );
    assert.equal(queued, true, "the browser queued the beacon");
    assert.equal((await beaconAnswer).status(), 202);
    const [beacon] = await rows("b", envWeb, `e.client_id = '${beaconName}'`);
    assert.ok(beacon, "the beacon's event is stored once the backend answered");
    assert.equal(beacon.name, beaconName);
    assert.deepEqual(beacon.properties, { via: "beacon" });

    const fetchName = `fetch-${Date.now()}`;
    const fetched = await page.evaluate(
      async ({ url, key, name }) => {
        const res = await fetch(url, {
          method: "POST",
          headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
          body: JSON.stringify([{ event: name, id: name }]),
        });
        return { status: res.status, body: await res.json() };
      },
      { url: `${backend.url}/v1/events`, key: keyWeb, name: fetchName },
    );
    // (Playwright does not report preflights; an answered fetch with
    // Authorization is one the browser's preflight let through.)
    assert.deepEqual(fetched, { status: 202, body: { accepted: 1 } });
    assert.equal((await rows("b", envWeb, `e.client_id = '${fetchName}'`)).length, 1);

    assert.deepEqual(problems, [], "no console errors, no failed request");
    assert.deepEqual([...hosts].sort(), [backend.url, pageOrigin].sort(), "nothing but the page and the backend was contacted");

    // The same page from an origin not in SLUICE_ALLOWED_ORIGINS
    // (localhost, not 127.0.0.1): the browser's preflight is refused and the
    // POST never sent.
    const unlisted = await browser.newPage();
    const refusals = [];
    unlisted.on("console", (m) => m.type() === "error" && refusals.push(m.text()));
    const unlistedOrigin = `http://localhost:${pages.address().port}`;
    await unlisted.goto(`${unlistedOrigin}/`);
    const blockedName = `blocked-${Date.now()}`;
    const blocked = await unlisted.evaluate(
      async ({ url, key, name }) => {
        try {
          const res = await fetch(url, {
            method: "POST",
            headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
            body: JSON.stringify([{ event: name, id: name }]),
          });
          return `answered ${res.status}`;
        } catch (e) {
          return e.name;
        }
      },
      { url: `${backend.url}/v1/events`, key: keyWeb, name: blockedName },
    );
    assert.equal(blocked, "TypeError", `${unlistedOrigin} is refused by CORS`);
    assert.ok(refusals.some((t) => /CORS policy/.test(t)), `the browser says why: ${refusals}`);
    assert.equal((await rows("b", envWeb, `e.client_id = '${blockedName}'`)).length, 0);
  } finally {
    await browser.close();
  }
});

test("/v1/events: a sendBeacon-style text/plain body with ?key= and a gzip body are stored when answered", { timeout: 120_000 }, async () => {
  const name = `plain-${Date.now()}`;
  const plain = await fetch(`${backend.url}/v1/events?key=${keyNode}`, {
    method: "POST",
    headers: { "Content-Type": "text/plain;charset=UTF-8", Origin: OTHER_ORIGIN },
    body: JSON.stringify({ batch: [{ event: name, id: `${name}-1`, properties: { page: "/pricing" } }, { event: name, id: `${name}-2` }], sentAt: new Date().toISOString() }),
  });
  assert.equal(plain.status, 202, await plain.clone().text());
  assert.deepEqual(await plain.json(), { accepted: 2 });
  assert.equal(plain.headers.get("access-control-allow-origin"), OTHER_ORIGIN);
  const plainRows = await rows("a", envNode, `e.name = '${name}'`);
  assert.deepEqual(plainRows.map((r) => r.client_id).sort(), [`${name}-1`, `${name}-2`]);
  assert.deepEqual(plainRows.find((r) => r.client_id === `${name}-1`).properties, { page: "/pricing" });

  const zipped = `zipped-${Date.now()}`;
  const events = Array.from({ length: 300 }, (_, i) => ({ event: zipped, id: `${zipped}-${i}`, properties: { i, pad: "p".repeat(500) } }));
  const raw = gzipSync(JSON.stringify(events));
  assert.ok(raw.length < 20_000, `${raw.length} bytes gzipped`);
  const gz = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${keyNode}`, "Content-Type": "application/json", "Content-Encoding": "gzip" },
    body: raw,
  });
  assert.equal(gz.status, 202, await gz.clone().text());
  assert.deepEqual(await gz.json(), { accepted: 300 });
  const gzRows = await rows("a", envNode, `e.name = '${zipped}'`);
  assert.equal(gzRows.length, 300);
  assert.deepEqual(gzRows.map((r) => r.properties.i).sort((x, y) => x - y), events.map((e) => e.properties.i));

  // The same gzip body again: accepted, and nothing more is stored.
  const again = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${keyNode}`, "Content-Type": "application/json", "Content-Encoding": "gzip" },
    body: raw,
  });
  assert.equal(again.status, 202);
  assert.equal((await rows("a", envNode, `e.name = '${zipped}'`)).length, 300, "ids make a resend land once");
  assert.deepEqual(await duplicates("a", envNode), []);

  // And a bad key at this door: 401, nothing stored.
  const bad = await fetch(`${backend.url}/v1/events?key=sk_${"1".repeat(32)}`, { method: "POST", headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ event: name }) });
  assert.equal(bad.status, 401);
  assert.equal((await rows("a", envNode, `e.name = '${name}'`)).length, 2);
});

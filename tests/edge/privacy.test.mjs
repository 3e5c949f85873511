// Enrichment and privacy end to end (issue 18): the built worker in
// Miniflare with a `request.cf` carrying geo fields and Bot Management, and
// the backend's direct door, both writing to MariaDB. Three environments:
// `trunc` (the default policy: addresses truncated, geo to the city, bots
// flagged), `private` (`backend env set --ip drop --geo none --bots drop
// --edge`, through scripts/key.mjs into the worker's KV) and `open` (keep,
// full, flag). A full IPv4 and IPv6 address, sent as `CF-Connecting-IP` /
// `X-Forwarded-For` and as `context.ip`, must not appear in a stored row, in
// what leaves the queue (every /v1/ingest body, recorded by a proxy in
// front of the backend), or in either side's logs, unless the environment
// keeps addresses.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Backend, startWorker, post, eventually, sql, hashKey } from "./harness.mjs";

const V4 = "203.0.113.77";
const V6 = "2001:db8:85a3:8d3:1319:8a2e:370:7348";
const V4_OTHER = "198.51.100.201";
const V6_OTHER = "2001:db8:abcd:12:ffff:eeee:dddd:cccc";
const FULL = [V4, V6, V4_OTHER, V6_OTHER];
const CF = {
  colo: "FRA", country: "DE", continent: "EU", isEUCountry: "1", region: "Hesse", regionCode: "HE",
  city: "Frankfurt am Main", postalCode: "60313", timezone: "Europe/Berlin",
  latitude: "50.11550", longitude: "8.68417", asn: 3320, asOrganization: "Deutsche Telekom AG",
  botManagement: { verifiedBot: false, score: 99 },
};
const BOT_CF = { ...CF, botManagement: { verifiedBot: true, score: 1 } };
const GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

const backend = new Backend({ env: { SLUICE_TRUSTED_PROXIES: "127.0.0.1/32", RUST_LOG: "info,sqlx=warn" } });
const env = {};
const keys = {};
let mf, proxy, kvDir;
const forwarded = [];

// Records every request the queue consumer makes of the backend, then passes it on.
function startProxy() {
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    forwarded.push(body.toString());
    const upstream = await fetch(`${backend.url}${req.url}`, { method: req.method, headers: req.headers, body: req.method === "GET" ? undefined : body }).catch(
      (e) => new Response(JSON.stringify({ error: "store_unavailable", message: String(e) }), { status: 503 }),
    );
    res.writeHead(upstream.status, Object.fromEntries(upstream.headers));
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

before(async () => {
  await backend.setup();
  kvDir = await mkdtemp(path.join(tmpdir(), "sluice-e2e-privacy-kv-"));
  for (const name of ["trunc", "private", "open"]) env[name] = await backend.createEnv(name, "a");
  const edge = ["--edge", "--persist-to", kvDir];
  await backend.cli("env", "set", "private", "--ip", "drop", "--geo", "none", "--bots", "drop", ...edge);
  await backend.cli("env", "set", "open", "--ip", "keep", "--geo", "full", "--bots", "flag");
  for (const name of ["trunc", "private", "open"]) {
    // The key's KV record carries the environment's policy (written through scripts/key.mjs).
    const lines = (await backend.cli("key", "create", name, ...edge)).trim().split("\n");
    keys[name] = lines[lines.length - 1].trim();
  }
  await backend.start();
  proxy = await startProxy();
  mf = await startWorker({ backendUrl: `http://127.0.0.1:${proxy.address().port}`, kvPersist: path.join(kvDir, "v3/kv") });
  // `open` was set without --edge: its key, created after, carries its policy all the same.
  const kv = await mf.getKVNamespace("API_KEYS");
  const record = JSON.parse(await kv.get(hashKey(keys.open)));
  assert.deepEqual(record.policy, { ip: "keep", geo: "full", bots: "flag" });
});

after(async () => {
  await mf?.dispose().catch(() => {});
  proxy?.close();
  await backend.drop();
  if (kvDir) await rm(kvDir, { recursive: true, force: true });
});

/** What each environment is sent: through the edge and straight to the backend's door. */
async function send(name) {
  const key = keys[name];
  const edge = (p, opts) => post(mf, p, { key, cf: CF, ...opts });
  const results = [
    // The door's address only, then a client's own context.ip beside another door address.
    await edge("/v1/events", { body: [{ event: "v4-header" }], headers: { "CF-Connecting-IP": V4 } }),
    await edge("/v1/events", { body: [{ event: "v6-own", context: { ip: V4_OTHER } }], headers: { "CF-Connecting-IP": V6 } }),
    await post(mf, "/v1/batch", {
      cf: CF,
      headers: { "CF-Connecting-IP": V4 },
      body: { writeKey: key, batch: [{ type: "track", event: "segment-own", userId: "u1", context: { ip: V6_OTHER } }] },
    }),
    await edge("/v1/events", { body: [{ event: "bot" }, { event: "bot" }], cf: BOT_CF, headers: { "CF-Connecting-IP": V4 } }),
    // A crawler Bot Management calls human (score 99): the parser at the backend's write says bot.
    await edge("/v1/events", { body: [{ event: "crawler", context: { user_agent: GOOGLEBOT } }], headers: { "CF-Connecting-IP": V4 } }),
  ];
  const direct = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}`, "X-Forwarded-For": V6 },
    body: JSON.stringify([{ event: "direct", context: { ip: V4_OTHER } }]),
  });
  results.push({ status: direct.status, text: await direct.text() });
  for (const r of results) assert.ok([200, 202].includes(r.status), `${name}: ${r.status} ${r.text}`);
}

async function stored(name, n) {
  return eventually(
    async () => {
      const rows = await backend.events("a", env[name]);
      return rows.length >= n ? rows : false;
    },
    { what: `${n} events of ${name}` },
  );
}

test("addresses, geo and bots are stored as each environment's policy says, and a full address goes nowhere else", async () => {
  for (const name of ["trunc", "private", "open"]) await send(name);
  const trunc = await stored("trunc", 7);
  const open = await stored("open", 7);
  const priv = await stored("private", 4);
  const by = (rows, event) => rows.filter((r) => r.name === event).map((r) => r.context);

  // trunc: /24 and /48, the client's own address too; geo to the city; bots flagged.
  assert.equal(by(trunc, "v4-header")[0].ip, "203.0.113.0");
  assert.equal(by(trunc, "v6-own")[0].ip, "198.51.100.0", "the client's context.ip, truncated");
  assert.equal(by(trunc, "segment-own")[0].ip, "2001:db8:abcd::");
  assert.equal(by(trunc, "direct")[0].ip, "198.51.100.0");
  const geo = by(trunc, "v4-header")[0].geo;
  assert.deepEqual(geo, {
    country: "DE", continent: "EU", eu: true, region: "Hesse", region_code: "HE", city: "Frankfurt am Main",
    timezone: "Europe/Berlin", asn: 3320, as_org: "Deutsche Telekom AG",
  });
  assert.equal(by(trunc, "v4-header")[0].country, "DE");
  assert.equal(by(trunc, "v4-header")[0].bot, false, "Miniflare's score 99 is no bot");
  assert.deepEqual(by(trunc, "bot").map((c) => c.bot), [true, true]);
  const human = by(trunc, "v4-header")[0];
  assert.ok(human.ua && typeof human.ua.device === "string", `the parsed user agent: ${JSON.stringify(human)}`);
  const crawler = by(trunc, "crawler")[0];
  assert.deepEqual([crawler.bot, crawler.ua.device, crawler.ua.browser, crawler.user_agent], [true, "bot", "Googlebot", GOOGLEBOT]);

  // open: everything as sent.
  assert.equal(by(open, "v4-header")[0].ip, V4);
  assert.equal(by(open, "v6-own")[0].ip, V4_OTHER);
  assert.equal(by(open, "direct")[0].ip, V4_OTHER);
  assert.equal(by(open, "v4-header")[0].geo.postal_code, "60313");
  assert.equal(by(open, "v4-header")[0].geo.latitude, 50.1155);

  // private: no address, no location, no bots (answered, not stored).
  assert.deepEqual(priv.map((r) => r.name).sort(), ["direct", "segment-own", "v4-header", "v6-own"]);
  for (const r of priv) {
    for (const field of ["ip", "geo", "country"]) assert.equal(r.context[field], undefined, `${field} in ${JSON.stringify(r.context)}`);
    assert.equal(r.context.bot, false);
  }

  // Nowhere else either: the whole shard, what left the queue, both sides' logs.
  const dump = (await sql(`SELECT * FROM events WHERE env_id IN (${env.trunc}, ${env.private})`, backend.shards.a)).flat().join("\n") +
    (await sql("SELECT * FROM contexts", backend.shards.a)).flat().join("\n");
  // A forwarded batch may mix environments: only trunc's and private's envelopes (and reports) count here.
  const ours = (item) => [env.trunc, env.private].includes(item?.env_id);
  const queued = forwarded
    .map((b) => {
      try {
        const parsed = JSON.parse(b);
        const items = Array.isArray(parsed) ? parsed : [...(parsed.reports ?? []), ...(parsed.dead_letters ?? [])];
        return JSON.stringify(items.filter(ours));
      } catch {
        return b;
      }
    })
    .join("\n");
  assert.ok(queued.includes("203.0.113.0"), "the recorded queue output holds the trunc events");
  const logs = mf.logs.join("") + backend.logs.join("");
  for (const ip of FULL) {
    assert.ok(!dump.includes(ip), `${ip} stored`);
    assert.ok(!queued.includes(ip), `${ip} left the queue`);
    assert.ok(!logs.includes(ip), `${ip} in a log line`);
  }
  assert.ok((await sql("SELECT context FROM contexts", backend.shards.a)).flat().join("").includes(V4) === false);
  assert.ok(forwarded.join("\n").includes(V4), "open keeps the address, so the check above could see one");
});

test("the edge and the backend's door count dropped bots in the delivery ledger", async () => {
  const token = (await backend.cli("env", "token", "private")).trim().split("\n").pop().trim();
  const from = Date.now() - 10 * 60_000;
  const direct = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${keys.private}`, "User-Agent": "curl/8.5.0" },
    body: JSON.stringify([{ event: "human" }]),
  });
  assert.equal(direct.status, 202);
  // A crawler's user agent is a bot's, whatever Bot Management says (here: nothing, at the backend's door):
  // answered as accepted, dropped at the write.
  const crawler = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${keys.private}`, "User-Agent": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)" },
    body: JSON.stringify([{ event: "crawl" }]),
  });
  assert.equal(crawler.status, 202);
  assert.deepEqual(await crawler.json(), { accepted: 1 }, "answered as accepted");
  const ledger = await eventually(
    async () => {
      const q = new URLSearchParams({ env: "private", from: String(from), to: String(Date.now() + 60_000) });
      const res = await fetch(`${backend.url}/v1/stats/delivery?${q}`, { headers: { Authorization: `Bearer ${token}` } });
      const body = await res.json();
      if (body.dropped?.bot >= 4 && body.stored >= 5 && body.in_flight === 0) return body;
      throw new Error(JSON.stringify(body));
    },
    { what: "the private environment's ledger with its dropped bots" },
  );
  // Sent: 6 events through the edge (2 bots by Bot Management, dropped at the door; a crawler by its user agent,
  // dropped at the write) + 1 to the backend's door, + the human and the crawler above.
  assert.deepEqual([ledger.received, ledger.accepted, ledger.stored, ledger.dropped.bot], [9, 9, 5, 4], JSON.stringify(ledger));
  assert.equal((await backend.events("a", env.private)).filter((r) => r.name === "crawl").length, 0);
});

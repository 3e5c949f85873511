// A body that ends before its Content-Length (the client closed early) is the
// client's fault: 400 `incomplete_body` with a JSON body, not a 500. Only a
// raw socket can send such a request (fetch fixes up the length), so these
// talk HTTP/1.1 by hand to workerd's own socket in Miniflare, and to the
// backend's own door (direct ingest), which must answer alike. Nothing here
// gets as far as the queue consumer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Backend, startWorker, seedKey, newKey } from "./harness.mjs";

let mf, key;
const backend = new Backend();
/** The two doors' base URLs, by name. */
const doors = {};

before(async () => {
  await backend.setup();
  const envId = await backend.createEnv("incomplete", "a");
  await backend.start();
  mf = await startWorker({ backendUrl: "http://127.0.0.1:9" });
  doors.edge = new URL(await mf.ready);
  doors.backend = new URL(backend.url);
  key = newKey();
  await seedKey(mf, key, { env_id: envId, name: "incomplete", status: "active" });
  await backend.importKey("incomplete", key);
});

after(async () => {
  await mf?.dispose();
  await backend.drop();
});

/**
 * Sends `headers` declaring `declared` bytes, then `body`, then (with
 * `halfClose`) closes the sending half of the socket; returns the parsed
 * response. (The backend's HTTP server, hyper, drops a connection whose
 * client half-closes before the answer, so a complete request keeps its
 * sending half open; a short body must half-close to end early.)
 */
function rawPost(url, path, { headers = {}, body, declared, halfClose = true }) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port), allowHalfOpen: true });
    const chunks = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within 15 s; got: ${Buffer.concat(chunks).toString().slice(0, 300)}`));
    }, 15_000);
    socket.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on("data", (c) => chunks.push(c));
    socket.on("end", () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString("utf8");
      const [head, ...rest] = text.split("\r\n\r\n");
      const status = Number(head.split(" ")[1]);
      const lines = head.split("\r\n").slice(1);
      const h = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
      let payload = rest.join("\r\n\r\n");
      if (/chunked/i.test(h["transfer-encoding"] ?? "")) payload = dechunk(payload);
      let json = null;
      try {
        json = JSON.parse(payload);
      } catch {}
      resolve({ status, headers: h, text: payload, json });
    });
    socket.on("connect", () => {
      const all = { Host: url.host, "Content-Length": String(declared), Connection: "close", ...headers };
      const head = `POST ${path} HTTP/1.1\r\n` + Object.entries(all).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n";
      socket.write(head);
      socket.write(body);
      if (halfClose) socket.end();
    });
  });
}

function dechunk(text) {
  let out = "";
  let rest = text;
  for (;;) {
    const eol = rest.indexOf("\r\n");
    if (eol < 0) return out;
    const size = parseInt(rest.slice(0, eol), 16);
    if (!size) return out;
    out += rest.slice(eol + 2, eol + 2 + size);
    rest = rest.slice(eol + 2 + size + 2);
  }
}

const event = JSON.stringify({ event: "truncated" });

for (const door of ["edge", "backend"]) {
  test(`${door}: a complete body over the raw socket is accepted (the client itself works)`, async () => {
    const res = await rawPost(doors[door], "/v1/events", {
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: event,
      declared: Buffer.byteLength(event),
      halfClose: false,
    });
    assert.equal(res.status, 202, res.text);
  });

  test(`${door}: /v1/events: a body shorter than its Content-Length is 400 incomplete_body`, async () => {
    const res = await rawPost(doors[door], "/v1/events", {
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: event.slice(0, 10),
      declared: Buffer.byteLength(event) + 100,
    });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json?.error, "incomplete_body", res.text);
    assert.match(res.json?.message ?? "", /Content-Length/);
    assert.match(res.headers["content-type"] ?? "", /application\/json/);
  });

  test(`${door}: /v1/batch (Segment): a body shorter than its Content-Length is 400 incomplete_body`, async () => {
    const batch = JSON.stringify({ batch: [{ type: "track", event: "truncated", userId: "u1" }] });
    const res = await rawPost(doors[door], "/v1/batch", {
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: batch.slice(0, 20),
      declared: Buffer.byteLength(batch),
    });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json?.error, "incomplete_body", res.text);
  });
}

test("both doors keep serving afterwards", async () => {
  const res = await mf.dispatchFetch("http://edge.test/v1/events", {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: event,
  });
  assert.equal(res.status, 202);
  const direct = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: event,
  });
  assert.equal(direct.status, 202, "the backend keeps serving too");
});

#!/usr/bin/env node
// A CPU profile of a worker under `wrangler dev` while this script loads it,
// through workerd's inspector (Chrome DevTools protocol: Profiler.start/stop).
//
//   scripts/wrangler.sh dev --ip 127.0.0.1 --port 8787 --inspector-port 9229 &
//   node scripts/cpu-profile.mjs --inspector-port 9229 --url http://127.0.0.1:8787/v1/events \
//     --key sk_... [--seconds 10] [--concurrency 32] [--out target/artifacts/edge.cpuprofile]
//
// Sends 1-event requests (the bench's body) with `--concurrency` in flight
// for `--seconds`, profiles meanwhile (100 µs sampling), writes the profile
// (open it in Chrome DevTools) and prints the self time per function, and
// per part: wasm (by function name when the wasm keeps its name section),
// the JS glue, the runtime's native calls, idle and GC.
import { writeFileSync } from "node:fs";
import WebSocket from "ws";

const opts = { seconds: 10, concurrency: 32, out: "target/artifacts/edge.cpuprofile", top: 40 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const name = argv[i].replace(/^--/, "").replace(/-/g, "_");
  opts[name] = argv[i + 1];
}
if (!opts.inspector_port && !opts.url) {
  console.error("usage: cpu-profile.mjs --inspector-port P [--url URL --key KEY] [--seconds S] [--concurrency C] [--out FILE]");
  console.error("       (without --inspector-port: only the load, and its requests/s)");
  process.exit(2);
}

if (!opts.inspector_port) {
  const { sent, failed } = await load();
  console.log(`${sent} requests answered 202 (${failed} other) in ${opts.seconds} s: ${(sent / opts.seconds).toFixed(0)} requests/s`);
  process.exit(0);
}

const targets = await (await fetch(`http://127.0.0.1:${opts.inspector_port}/json`)).json();
// wrangler's inspector proxy lists the user Worker; take the first target.
const target = targets.find((t) => t.webSocketDebuggerUrl) ?? process.exit(console.error("no inspector target", targets) || 1);
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((resolve, reject) => (ws.once("open", resolve), ws.once("error", reject)));
let nextId = 1;
const pending = new Map();
ws.on("message", (data) => {
  const msg = JSON.parse(data.toString());
  if (msg.id && pending.has(msg.id)) {
    pending.get(msg.id)(msg);
    pending.delete(msg.id);
  }
});
const call = (method, params = {}) =>
  new Promise((resolve) => {
    const id = nextId++;
    pending.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });

await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");

const { sent, failed } = await load();
const { result } = await call("Profiler.stop");
ws.close();
const profile = result.profile;
writeFileSync(opts.out, JSON.stringify(profile));

// Self time per node: samples × their time deltas.
const self = new Map();
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i];
  self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
}
const perFunction = new Map();
const perPart = new Map();
let total = 0;
const part = (frame) => {
  const { functionName: f, url } = frame;
  if (f === "(idle)") return "idle";
  if (f === "(garbage collector)") return "GC";
  if (f === "(program)") return "runtime (program)";
  if (url.startsWith("wasm://") || /^\$?wasm-function|^\$/.test(f)) return "wasm";
  if (url === "" ) return "runtime native calls";
  return "JS (glue, shim)";
};
for (const [id, us] of self) {
  const frame = byId.get(id).callFrame;
  const name = `${frame.functionName || "(anonymous)"} ${frame.url.split("/").pop()}`;
  perFunction.set(name, (perFunction.get(name) ?? 0) + us);
  const p = part(frame);
  perPart.set(p, (perPart.get(p) ?? 0) + us);
  total += us;
}
const ms = (us) => (us / 1000).toFixed(1).padStart(8);
const pct = (us) => ((100 * us) / total).toFixed(1).padStart(5);
console.log(`${sent} requests answered 202 (${failed} other) in ${opts.seconds} s; profile ${opts.out}`);
console.log(`\nper part (self ms, % of the profile; per request = busy / ${sent || 1}):`);
for (const [p, us] of [...perPart].sort((a, b) => b[1] - a[1])) console.log(`${ms(us)} ${pct(us)}%  ${p}`);
const busy = total - (perPart.get("idle") ?? 0);
if (sent) console.log(`busy ${(busy / 1000).toFixed(1)} ms: ${(busy / sent).toFixed(1)} µs per request`);
console.log(`\ntop ${opts.top} functions by self time:`);
for (const [f, us] of [...perFunction].sort((a, b) => b[1] - a[1]).slice(0, Number(opts.top))) console.log(`${ms(us)} ${pct(us)}%  ${f}`);

// `--concurrency` clients posting the bench's 1-event body for `--seconds`.
async function load() {
  let sent = 0;
  let failed = 0;
  if (!opts.url) {
    await new Promise((r) => setTimeout(r, Number(opts.seconds) * 1000));
    return { sent, failed };
  }
  const body = JSON.stringify([{ event: "page_view", user_id: "u0", properties: { path: "/pricing", ref: "ad", plan: "pro", amount: 12.5, step: 0 } }]);
  const until = Date.now() + Number(opts.seconds) * 1000;
  const client = async () => {
    while (Date.now() < until) {
      const r = await fetch(opts.url, { method: "POST", body, headers: { authorization: `Bearer ${opts.key}`, "content-type": "application/json" } });
      await r.arrayBuffer();
      r.status === 202 ? sent++ : failed++;
    }
  };
  await Promise.all(Array.from({ length: Number(opts.concurrency) }, client));
  return { sent, failed };
}

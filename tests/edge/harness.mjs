// Shared pieces of the edge end-to-end tests: the built worker in Miniflare
// (real KV, queues and dead-letter queue), the real backend binary against
// uniquely named MariaDB databases, and MySQL queries through the `mariadb` CLI.
import { spawn, execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { promisify } from "node:util";
import { build } from "esbuild";
import { Miniflare } from "miniflare";

const run = promisify(execFile);
export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const INGEST_TOKEN = "e2e-ingest-token-" + randomBytes(16).toString("hex");
export const QUEUE = "sluice-events";
export const DLQ = "sluice-events-dlq";

// Children still running when the test process ends (a failed `after`, a
// timeout's SIGTERM) are killed here rather than left behind.
const children = new Set();
const killChildren = () => {
  for (const child of children) child.kill("SIGKILL");
};
process.on("exit", killChildren);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    killChildren();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns a truthy value or `ms` pass. */
export async function eventually(check, { ms = 20_000, every = 200, what = "condition" } = {}) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

// ------------------------------------------------------------------ MySQL

const serverUrl = new URL(process.env.SLUICE_TEST_MYSQL_URL || "mysql://root@127.0.0.1:3306");

export function dbUrl(database) {
  const u = new URL(serverUrl.href);
  u.pathname = "/" + database;
  return u.href;
}

/** Runs SQL with the `mariadb` client (on `server`, default the test server); returns rows as arrays of strings (NULL → null). */
export async function sql(statement, database, server) {
  const url = server ? new URL(server) : serverUrl;
  const args = ["-h", url.hostname, "-P", url.port || "3306", "-u", decodeURIComponent(url.username || "root"), "-N", "-B", "--raw"];
  if (url.password) args.push(`-p${decodeURIComponent(url.password)}`);
  if (database) args.push("-D", database);
  args.push("-e", statement);
  const { stdout } = await run("mariadb", args, { timeout: 30_000, maxBuffer: 64 << 20 });
  return stdout
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => l.split("\t").map((v) => (v === "NULL" ? null : v)));
}

// ---------------------------------------------------------------- backend

/**
 * The real backend (`target/debug/backend`) with its own catalog and two
 * shards, `a` and `b`, in databases named after this run; `drop()` removes them.
 */
export class Backend {
  /** `env`: more variables for the backend's processes (`SLUICE_ALLOWED_ORIGINS`, ...). */
  constructor({ env = {} } = {}) {
    this.extraEnv = env;
    this.prefix = `sluice_e2e_${process.pid}_${randomBytes(3).toString("hex")}`;
    this.catalog = `${this.prefix}_catalog`;
    this.shards = { a: `${this.prefix}_shard_a`, b: `${this.prefix}_shard_b` };
    this.bin = path.join(root, "target/debug/backend");
    this.proc = null;
    this.port = null;
    this.logs = [];
  }

  env() {
    return {
      ...process.env,
      SLUICE_DATABASE_URL: dbUrl(this.catalog),
      SLUICE_INGEST_TOKEN: INGEST_TOKEN,
      SLUICE_LISTEN_ADDR: `127.0.0.1:${this.port}`,
      SLUICE_LOG_FORMAT: "json",
      RUST_LOG: "warn",
      ...this.extraEnv,
    };
  }

  async cli(...args) {
    const { stdout } = await run(this.bin, args, { env: this.env(), timeout: 60_000 });
    return stdout;
  }

  async setup() {
    this.port = await freePort();
    await this.cli("migrate");
    await this.cli("shard", "add", "a", dbUrl(this.shards.a));
    await this.cli("shard", "add", "b", dbUrl(this.shards.b));
  }

  async createEnv(name, shard) {
    const out = await this.cli("env", "create", name, "--shard", shard);
    const id = Number.parseInt(out.split("\n")[0].trim(), 10);
    if (!Number.isInteger(id)) throw new Error(`env create printed ${JSON.stringify(out)}`);
    return id;
  }

  /** A new API key of environment `name` (`backend key create`; its last output line). */
  async createKey(name) {
    const lines = (await this.cli("key", "create", name)).trim().split("\n");
    return lines[lines.length - 1].trim();
  }

  /** Store the hash of `key` (made elsewhere, e.g. by newKey()) in the catalog for environment `name`. */
  async importKey(name, key) {
    await this.cli("key", "import", name, "--hash", hashKey(key));
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (this.proc) return;
    const proc = spawn(this.bin, ["serve"], { env: this.env(), stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    children.add(proc);
    const keep = (chunk) => {
      this.logs.push(chunk.toString());
      if (this.logs.length > 200) this.logs.shift();
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    proc.on("exit", () => {
      children.delete(proc);
      if (this.proc === proc) this.proc = null;
    });
    await eventually(
      async () => {
        if (!this.proc) throw new Error("backend exited: " + this.logs.join(""));
        const res = await fetch(`${this.url}/healthz`);
        return res.status === 200;
      },
      { ms: 30_000, what: "backend /healthz" },
    );
  }

  /** SIGKILL: no draining, no counter flush. */
  async kill() {
    const proc = this.proc;
    if (!proc) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGKILL");
    await exited;
    this.proc = null;
  }

  async stop() {
    const proc = this.proc;
    if (!proc) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
    this.proc = null;
  }

  async drop() {
    await this.stop();
    for (const db of [this.catalog, ...Object.values(this.shards)]) {
      await sql(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
    }
  }

  /** Rows of `events_full` in a shard (names resolved, context whole), JSON columns as text. */
  async events(shard, envId) {
    const rows = await sql(
      `SELECT HEX(e.id), e.name, e.env_id, UNIX_TIMESTAMP(e.ts)*1000, UNIX_TIMESTAMP(e.received_at)*1000,
              e.user_id, e.anonymous_id, e.session_id, e.client_id, e.properties, e.context
         FROM events_full e
        WHERE e.env_id = ${Number(envId)} ORDER BY e.ts, e.id`,
      this.shards[shard],
    );
    return rows.map(([hex, name, env_id, ts, received_at, user_id, anonymous_id, session_id, client_id, properties, context]) => ({
      hex,
      name,
      env_id: Number(env_id),
      ts: Math.round(Number(ts)),
      received_at: Math.round(Number(received_at)),
      user_id,
      anonymous_id,
      session_id,
      client_id,
      properties: JSON.parse(properties),
      context: JSON.parse(context),
    }));
  }

  async count(shard, envId) {
    const [[n]] = await sql(`SELECT COUNT(*) FROM events WHERE env_id = ${Number(envId)}`, this.shards[shard]);
    return Number(n);
  }

  /** The Segment columns of the rows whose SQL condition `where` holds (client id = the messageId). */
  async segmentRows(shard, envId, where = "1=1") {
    const out = await sql(
      `SELECT e.client_id, e.event_type, e.name, e.user_id, e.anonymous_id, e.group_id, e.previous_id,
              e.properties, e.traits, e.context, UNIX_TIMESTAMP(e.ts)*1000, UNIX_TIMESTAMP(e.received_at)*1000
         FROM events_full e
        WHERE e.env_id = ${Number(envId)} AND ${where}`,
      this.shards[shard],
    );
    return out.map(([client_id, type, name, user_id, anonymous_id, group_id, previous_id, properties, traits, context, ts, received_at]) => ({
      client_id,
      type: SEGMENT_TYPES[Number(type)],
      name,
      user_id,
      anonymous_id,
      group_id,
      previous_id,
      properties: JSON.parse(properties),
      traits: traits == null ? {} : JSON.parse(traits),
      context: JSON.parse(context),
      ts: Math.round(Number(ts)),
      received_at: Math.round(Number(received_at)),
    }));
  }
}

/** Segment message types, by the event type code the shard stores. */
export const SEGMENT_TYPES = ["track", "identify", "page", "screen", "group", "alias"];

/**
 * A local page on an origin of its own (127.0.0.1, a free port) with the
 * unmodified @segment/analytics-next from node_modules, bundled with esbuild,
 * as `window.AnalyticsBrowser`. Close the returned server when done.
 */
export async function serveAnalyticsPage(title) {
  const bundle = await build({
    stdin: {
      contents: "import { AnalyticsBrowser } from '@segment/analytics-next'; window.AnalyticsBrowser = AnalyticsBrowser;",
      resolveDir: root,
      loader: "js",
    },
    bundle: true,
    format: "iife",
    platform: "browser",
    target: "es2020",
    write: false,
    logLevel: "silent",
    define: { "process.env.NODE_ENV": '"production"' },
  });
  const js = bundle.outputFiles[0].text;
  const html = `<!doctype html><meta charset="utf-8"><title>${title}</title><script src="/analytics.js"></script><h1>shop</h1>`;
  const server = createHttpServer((req, res) => {
    if (req.url === "/analytics.js") res.writeHead(200, { "Content-Type": "text/javascript" }).end(js);
    else if (req.url === "/favicon.ico") res.writeHead(204).end();
    else if (req.url === "/" || req.url.startsWith("/?")) res.writeHead(200, { "Content-Type": "text/html" }).end(html);
    else res.writeHead(404).end();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

// ----------------------------------------------------------------- worker

export const hashKey = (key) => createHash("sha256").update(key).digest("hex");
export const newKey = () => "sk_" + randomBytes(16).toString("hex");

/** The built worker (build/index.js + index_bg.wasm) in Miniflare. */
/** Miniflare running build/ like wrangler.toml does; `rateLimit` is the KEY_RATE_LIMIT budget per key per 10 s. */
export async function startWorker({ backendUrl, vars = {}, maxRetries = 100, kvPersist, rateLimit = 1_000_000, log = !!process.env.EDGE_TEST_LOG } = {}) {
  const workerLogs = [];
  const mf = new Miniflare({
    modules: true,
    scriptPath: path.join(root, "build/index.js"),
    modulesRoot: path.join(root, "build"),
    modulesRules: [
      { type: "ESModule", include: ["**/*.js"] },
      { type: "CompiledWasm", include: ["**/*.wasm"] },
    ],
    compatibilityDate: "2026-04-20",
    // The ids of wrangler.toml, so a --persist-to directory written by
    // `wrangler kv key put --local` (scripts/key.mjs) is read as is.
    kvNamespaces: { API_KEYS: "00000000000000000000000000000001", DEAD_LETTERS: "00000000000000000000000000000002" },
    ...(kvPersist ? { kvPersist } : {}),
    queueProducers: { EVENTS: { queueName: QUEUE }, EVENTS_DLQ: { queueName: DLQ } },
    ratelimits: { KEY_RATE_LIMIT: { simple: { limit: rateLimit, period: 10 } } },
    queueConsumers: {
      [QUEUE]: { maxBatchSize: 50, maxBatchTimeout: 1, maxRetries, deadLetterQueue: DLQ },
      [DLQ]: { maxBatchSize: 10, maxBatchTimeout: 1, maxRetries: 10 },
    },
    bindings: {
      BACKEND_URL: backendUrl,
      INGEST_TOKEN,
      FORWARD_CONCURRENCY: "2",
      FORWARD_BATCH_SIZE: "100",
      ALLOWED_ORIGINS: "https://app.example",
      DEAD_LETTER_QUEUE: DLQ,
      RATE_LIMIT_PERIOD_SECONDS: "10",
      ...vars,
    },
    handleRuntimeStdio(stdout, stderr) {
      const keep = (chunk) => {
        const text = chunk.toString();
        if (log) process.stderr.write(text);
        workerLogs.push(text);
        if (workerLogs.length > 500) workerLogs.shift();
      };
      stdout.on("data", keep);
      stderr.on("data", keep);
    },
  });
  await mf.ready;
  mf.logs = workerLogs;
  return mf;
}

export async function seedKey(mf, key, record) {
  const kv = await mf.getKVNamespace("API_KEYS");
  await kv.put(hashKey(key), JSON.stringify(record));
}

/** POSTs to the worker. `body` objects are JSON-encoded; `cf` is the request's `request.cf`. */
export async function post(mf, pathAndQuery, { body, key, headers = {}, raw, cf = { country: "DE", colo: "FRA" } } = {}) {
  const h = { "Content-Type": "application/json", ...headers };
  if (key) h.Authorization = `Bearer ${key}`;
  const res = await mf.dispatchFetch(`http://edge.test${pathAndQuery}`, {
    method: "POST",
    headers: h,
    body: raw ?? JSON.stringify(body),
    cf,
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text, headers: res.headers };
}

export async function deadLetters(mf) {
  const kv = await mf.getKVNamespace("DEAD_LETTERS");
  const { keys } = await kv.list({ prefix: "dlq/" });
  const out = [];
  for (const { name } of keys) out.push({ key: name, record: JSON.parse(await kv.get(name)) });
  return out;
}

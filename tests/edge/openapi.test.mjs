// edge/openapi.json against the built worker in Miniflare (with the real
// backend behind its queue): schemathesis sends the description's examples
// and requests generated from it, valid and invalid, to the worker on
// 127.0.0.1, and checks every answer is described (status, content type,
// headers, body) and every request the description calls invalid gets a 4xx.
// schemathesis comes from scripts/schemathesis.sh (pinned, under .dev/), or
// $SLUICE_SCHEMATHESIS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Backend, startWorker, seedKey, newKey, root } from "./harness.mjs";

const run = promisify(execFile);
let backend, mf, edgeUrl, schemathesis;
const key = newKey();

before(async () => {
  schemathesis = process.env.SLUICE_SCHEMATHESIS;
  if (!schemathesis) {
    const { stdout } = await run(path.join(root, "scripts/schemathesis.sh"), { timeout: 600_000 });
    schemathesis = stdout.trim();
  }
  backend = new Backend();
  await backend.setup();
  const env = await backend.createEnv("shop", "a");
  await backend.start();
  mf = await startWorker({ backendUrl: backend.url });
  edgeUrl = new URL(await mf.ready).origin;
  await seedKey(mf, key, { env_id: env, name: "shop", status: "active" });
});

after(async () => {
  await mf?.dispose().catch(() => {});
  await backend?.drop();
});

/** Runs schemathesis; resolves with its exit code and output. */
function schemathesisRun(args) {
  return new Promise((resolve) => {
    // Its cache of crashes goes to the current directory: a private one.
    const cwd = mkdtempSync(path.join(tmpdir(), "sluice-schemathesis-"));
    const child = spawn(schemathesis, args, { cwd, env: { ...process.env, NO_COLOR: "1" } });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("close", (code) => resolve({ code, out }));
  });
}

const common = () => [
  "--config-file", path.join(root, "tests/schemathesis.toml"),
  "run", path.join(root, "edge/openapi.json"),
  "--url", edgeUrl,
  "--checks",
  "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection",
  "--max-examples", "20", "--max-time", "45", "--workers", "1",
  "--request-timeout", "10", "--seed", "21", "--mode", "all",
  "--phases", "examples,coverage,fuzzing",
  "--suppress-health-check", "all",
];

test("schemathesis finds nothing the edge's description does not say (public doors, with an API key)", async () => {
  const { code, out } = await schemathesisRun([...common(), "--include-tag", "public", "--header", `Authorization: Bearer ${key}`]);
  assert.equal(code, 0, out);
});

test("schemathesis finds nothing the edge's description does not say (/healthz)", async () => {
  const { code, out } = await schemathesisRun([...common(), "--include-tag", "health"]);
  assert.equal(code, 0, out);
});

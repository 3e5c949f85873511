// Workers KV through scripts/wrangler.sh, for the operator scripts (key.mjs,
// dlq.mjs). Local by default (wrangler's local KV under .dev/wrangler-state,
// or --persist-to DIR); `remote: true` talks to Cloudflare.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Parses `--flag value` options (those in `valued`), `--remote`, and positionals. */
export function parseArgs(argv, valued, usage) {
  const [command, ...rest] = argv;
  const opts = { command, positional: [] };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === "--remote" || arg === "--all") opts[arg.slice(2)] = true;
    else if (valued.includes(arg)) {
      if (i + 1 >= rest.length) usage(`${arg} needs a value`);
      opts[arg.slice(2).replaceAll("-", "_")] = rest[++i];
    } else if (arg.startsWith("--")) usage(`unknown option ${arg}`);
    else opts.positional.push(arg);
  }
  return opts;
}

export function kv(binding, opts) {
  const where = opts.remote ? ["--remote"] : ["--local", "--persist-to", opts.persist_to || path.join(root, ".dev/wrangler-state")];
  const env = opts.env ? ["--env", opts.env] : [];
  const run = (args) =>
    spawnSync(path.join(root, "scripts/wrangler.sh"), [...args, "--binding", binding, ...where, ...env], {
      cwd: root,
      encoding: "utf8",
      maxBuffer: 64 << 20,
    });
  const must = (args) => {
    const res = run(args);
    if (res.status !== 0) {
      console.error(res.stdout, res.stderr);
      throw new Error(`wrangler ${args.slice(0, 3).join(" ")} failed (${res.status})`);
    }
    return res.stdout;
  };
  return {
    /** `expiration`: unix seconds at which KV deletes the key (none: kept). */
    put: (key, value, { expiration } = {}) =>
      must(["kv", "key", "put", key, value, ...(expiration ? ["--expiration", String(expiration)] : [])]),
    delete: (key) => must(["kv", "key", "delete", key]),
    /** The value as text, or null when absent. */
    get(key) {
      const res = run(["kv", "key", "get", key, "--text"]);
      return res.status === 0 ? res.stdout.replace(/\n$/, "") : null;
    },
    list(prefix) {
      const out = must(["kv", "key", "list", ...(prefix ? ["--prefix", prefix] : [])]);
      return JSON.parse(out.slice(out.indexOf("["))).map((k) => k.name);
    },
  };
}

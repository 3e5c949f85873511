#!/usr/bin/env node
// API keys for the edge worker. A key is shown once, at creation; KV keeps
// only its SHA-256 hex, under which the record {env_id, name, status} lives.
//
//   node scripts/key.mjs create --env-id 7 --env-name web [--remote] [--env production]
//   node scripts/key.mjs put --hash <sha256 hex> --env-id 7 --env-name web   (a key made by `backend key create --edge`)
//   node scripts/key.mjs revoke sk_... | --hash <sha256 hex>   [--remote] [--env production]
//   node scripts/key.mjs list --env-id 7                       [--remote] [--env production]
//   node scripts/key.mjs policy --env-id 7 --policy '{"ip":"drop","geo":"country","bots":"flag"}'
//       (the environment's privacy policy, written into every key record of the environment;
//        `put --policy JSON` writes it with a new key: what `backend env set --edge` and
//        `backend key create --edge` run)
//   node scripts/key.mjs retention --env-id 7 --days 30
//       (the environment's retention, for its dead letters: the DLQ consumer gives each letter
//        a KV expirationTtl of the shortest retention of its events' environments; --days 0
//        removes it; what `backend env retention --edge` runs. Written to the DEAD_LETTERS
//        namespace as retention/<env id>; letters stored before keep theirs.)
//
// Local by default: wrangler's local KV under .dev/wrangler-state (what
// `scripts/wrangler.sh dev --persist-to .dev/wrangler-state` serves);
// --persist-to DIR picks another. --remote writes to Cloudflare.
import { createHash, randomBytes } from "node:crypto";
import { kv, parseArgs } from "./kv.mjs";

function usage(message) {
  if (message) console.error(`key: ${message}`);
  console.error(
    "usage: key.mjs create --env-id N --env-name NAME | put --hash HEX --env-id N --env-name NAME |\n" +
      "       revoke KEY | revoke --hash HEX | list --env-id N | policy --env-id N --policy JSON |\n" +
      "       retention --env-id N --days D\n" +
      "       [--remote] [--env staging|production] [--persist-to DIR]",
  );
  process.exit(2);
}

const sha256 = (text) => createHash("sha256").update(text).digest("hex");
const opts = parseArgs(process.argv.slice(2), ["--env-id", "--env-name", "--env", "--persist-to", "--hash", "--policy", "--days"], usage);
const keys = kv("API_KEYS", opts);

function record(hash) {
  try {
    return JSON.parse(keys.get(hash) ?? "null");
  } catch {
    return null;
  }
}

// {ip, geo, bots} as the edge reads it (intake::enrich::Policy); the edge
// refuses a key whose record holds a value it does not know.
const POLICY_VALUES = { ip: ["drop", "truncate", "keep"], geo: ["full", "city", "country", "none"], bots: ["keep", "flag", "drop"] };
function policy(opts) {
  if (opts.policy === undefined) return undefined;
  let p;
  try {
    p = JSON.parse(opts.policy);
  } catch {
    usage("--policy must be JSON");
  }
  for (const [field, values] of Object.entries(POLICY_VALUES))
    if (p[field] !== undefined && !values.includes(p[field])) usage(`--policy: ${field} must be one of ${values.join(", ")}`);
  return p;
}

function envId(opts) {
  const id = Number(opts.env_id);
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) usage("--env-id must be an unsigned 32-bit integer");
  return id;
}

switch (opts.command) {
  case "create": {
    const env_id = envId(opts);
    if (!opts.env_name) usage("--env-name is required");
    const key = "sk_" + randomBytes(16).toString("hex"); // 128 random bits
    const hash = sha256(key);
    keys.put(hash, JSON.stringify({ env_id, name: opts.env_name, status: "active", created_at: new Date().toISOString() }));
    console.error(`key: created for env ${env_id} (${opts.env_name}); hash ${hash}. Store the key now: it is not shown again.`);
    console.log(key);
    break;
  }
  case "put": {
    const env_id = envId(opts);
    if (!opts.env_name) usage("--env-name is required");
    if (!opts.hash || !/^[0-9a-f]{64}$/.test(opts.hash)) usage("--hash must be the key's SHA-256 hex");
    keys.put(opts.hash, JSON.stringify({ env_id, name: opts.env_name, status: "active", created_at: new Date().toISOString(), policy: policy(opts) }));
    console.error(`key: ${opts.hash} active for env ${env_id} (${opts.env_name})`);
    break;
  }
  case "revoke": {
    const hash = opts.hash || (opts.positional[0] && sha256(opts.positional[0]));
    if (!hash || !/^[0-9a-f]{64}$/.test(hash)) usage("give the key, or --hash with its SHA-256 hex");
    const current = record(hash);
    if (!current) {
      console.error(`key: no key with hash ${hash}`);
      process.exit(1);
    }
    keys.put(hash, JSON.stringify({ ...current, status: "revoked", revoked_at: new Date().toISOString() }));
    console.error(`key: revoked ${hash} (env ${current.env_id}); edges stop accepting it within ~60 s (KV) + 30 s (isolate cache)`);
    break;
  }
  case "list": {
    const env_id = envId(opts);
    for (const hash of keys.list()) {
      const r = record(hash);
      if (r && r.env_id === env_id) console.log([hash, r.status, r.name, r.created_at ?? ""].join("\t"));
    }
    break;
  }
  case "policy": {
    const env_id = envId(opts);
    const p = policy(opts);
    if (!p) usage("--policy is required");
    let n = 0;
    for (const hash of keys.list()) {
      const r = record(hash);
      if (r && r.env_id === env_id) {
        keys.put(hash, JSON.stringify({ ...r, policy: p }));
        n++;
      }
    }
    console.error(`key: policy ${JSON.stringify(p)} written to ${n} key record(s) of env ${env_id}; edges apply it within ~60 s (KV) + 30 s (isolate cache)`);
    break;
  }
  case "retention": {
    const env_id = envId(opts);
    const days = Number(opts.days);
    if (!Number.isInteger(days) || days < 0 || days > 0xffffffff) usage("--days must be a whole number of days (0: none)");
    // The DLQ consumer reads it as deadletter::retention_key (edge/src/deadletter.rs).
    const letters = kv("DEAD_LETTERS", opts);
    if (days > 0) letters.put(`retention/${env_id}`, String(days));
    else if (letters.get(`retention/${env_id}`) !== null) letters.delete(`retention/${env_id}`);
    console.error(`key: env ${env_id}'s dead letters ${days > 0 ? `expire ${days} days after they are stored` : "are kept until deleted"} (those stored from now on)`);
    break;
  }
  default:
    usage(opts.command ? `unknown command ${opts.command}` : undefined);
}

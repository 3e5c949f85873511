#!/usr/bin/env node
// Dead letters the edge's DLQ consumer stored in the DEAD_LETTERS KV namespace
// (key dlq/<ms>/<message id>, value {reason, attempts, source_queue, body, ...}).
//
//   node scripts/dlq.mjs list                       [--remote] [--env production]
//   node scripts/dlq.mjs show KEY
//   node scripts/dlq.mjs replay KEY... | --all      --backend-url URL  (token: $SLUICE_INGEST_TOKEN)
//   node scripts/dlq.mjs delete KEY...
//   node scripts/dlq.mjs erase --env-id N --user-id ID | --anonymous-id ID
//
// replay POSTs a letter's body (a JSON array of envelopes) to the backend's
// /v1/ingest. Envelope ids are idempotency keys, so replaying what partly
// landed inserts nothing twice. A letter is deleted only after a 200.
// erase takes one person's envelopes (by the id's own field, or as an alias's
// previous_id) out of every letter: `backend user erase --edge` runs it. A
// letter left with none is deleted; the others are rewritten without them.
import { kv, parseArgs } from "./kv.mjs";

function usage(message) {
  if (message) console.error(`dlq: ${message}`);
  console.error(
    "usage: dlq.mjs list | show KEY | replay KEY...|--all --backend-url URL | delete KEY... | erase --env-id N --user-id ID|--anonymous-id ID  [--remote] [--env E] [--persist-to DIR]",
  );
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2), ["--env", "--persist-to", "--backend-url", "--env-id", "--user-id", "--anonymous-id"], usage);
const letters = kv("DEAD_LETTERS", opts);
const read = (key) => {
  const text = letters.get(key);
  if (text === null) return null;
  try {
    return JSON.parse(text);
  } catch {
    console.error(`dlq: ${key}: the stored record is not JSON (${text.length} bytes read); read it again, or show/delete it`);
    return null;
  }
};

/** When a letter stored under `key` (dlq/<ms>/…) expires under its environments' retention (unix s), if it does. */
function letterExpiry(key, envelopes) {
  const storedMs = Number(key.split("/")[1]);
  const days = [...new Set(envelopes.map((e) => e?.env_id))]
    .map((id) => Number.parseInt(letters.get(`retention/${id}`) ?? "", 10))
    .filter((d) => Number.isInteger(d) && d > 0);
  if (!days.length || !Number.isFinite(storedMs)) return undefined;
  return Math.floor(storedMs / 1000) + Math.min(...days) * 86_400;
}

switch (opts.command) {
  case "list":
    for (const key of letters.list("dlq/")) {
      const r = read(key);
      if (r) console.log([key, r.attempts, r.source_queue ?? "-", r.reason].join("\t"));
    }
    break;
  case "show":
    for (const key of opts.positional) console.log(JSON.stringify(read(key), null, 2));
    break;
  case "delete":
    for (const key of opts.positional) letters.delete(key);
    break;
  case "replay": {
    const backend = (opts.backend_url || process.env.BACKEND_URL || "").replace(/\/$/, "");
    const token = process.env.SLUICE_INGEST_TOKEN;
    if (!backend || !token) usage("replay needs --backend-url (or $BACKEND_URL) and $SLUICE_INGEST_TOKEN");
    const keys = opts.all ? letters.list("dlq/") : opts.positional;
    let failed = 0;
    for (const key of keys) {
      const r = read(key);
      let envelopes;
      try {
        envelopes = JSON.parse(r?.body ?? "");
        if (!Array.isArray(envelopes)) throw new Error("not an array");
      } catch {
        console.error(`dlq: ${key}: body is not a JSON array of envelopes; fix it by hand (show/delete)`);
        failed++;
        continue;
      }
      const res = await fetch(`${backend}/v1/ingest`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify(envelopes),
      });
      const text = await res.text();
      if (res.status === 200) {
        letters.delete(key);
        console.log(`${key}\treplayed ${envelopes.length} envelopes\t${text}`);
      } else {
        console.error(`dlq: ${key}: backend answered ${res.status}: ${text.slice(0, 500)}`);
        failed++;
      }
    }
    process.exit(failed ? 1 : 0);
  }
  case "erase": {
    const envId = Number(opts.env_id);
    const [field, id] = opts.user_id !== undefined ? ["user_id", opts.user_id] : ["anonymous_id", opts.anonymous_id];
    if (!Number.isInteger(envId) || envId <= 0 || !id) usage("erase needs --env-id N and --user-id ID or --anonymous-id ID");
    const theirs = (e) => e && e.env_id === envId && (e[field] === id || e.previous_id === id);
    let removed = 0;
    let touched = 0;
    for (const key of letters.list("dlq/")) {
      const r = read(key);
      let envelopes;
      try {
        envelopes = JSON.parse(r?.body ?? "");
      } catch {
        continue;
      }
      if (!Array.isArray(envelopes)) continue;
      const kept = envelopes.filter((e) => !theirs(e));
      if (kept.length === envelopes.length) continue;
      removed += envelopes.length - kept.length;
      touched++;
      // A rewritten letter keeps the expiry the consumer gave it: the shortest
      // retention of its environments (retention/<env id>), from the time in its key.
      const expiration = letterExpiry(key, kept);
      if (kept.length === 0 || (expiration && expiration < Date.now() / 1000 + 60)) letters.delete(key);
      else {
        const record = { ...r, body: JSON.stringify(kept), erased: (r.erased ?? 0) + envelopes.length - kept.length };
        letters.put(key, JSON.stringify(record), { expiration });
      }
    }
    console.error(`dlq: erase: ${removed} envelopes taken out of ${touched} dead letters`);
    break;
  }
  default:
    usage(opts.command ? `unknown command ${opts.command}` : undefined);
}

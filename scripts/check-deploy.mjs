#!/usr/bin/env node
// Checks the operator's kit in deploy/ (run by `make test`):
//   - the Prometheus config and alerting rules: `promtool check config`,
//     `promtool check rules`, and the rules' unit tests (`promtool test rules`);
//   - the Grafana dashboard: well-formed for import (unique panel ids, a grid
//     position, every query on the dashboard's Prometheus variable) and every
//     query valid PromQL (each is checked by promtool as a recording rule,
//     with the dashboard's variables filled in).
// That every metric the kit names is one the backend exports is checked by a
// Rust test (backend/src/metrics.rs). Usage: node scripts/check-deploy.mjs [PROMTOOL]
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const promtool =
  process.argv[2] ?? execFileSync(join(root, "scripts/promtool.sh"), { encoding: "utf8" }).trim();
const problems = [];
const run = (...args) => {
  try {
    execFileSync(promtool, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    problems.push(`promtool ${args.join(" ")}:\n${e.stdout}${e.stderr}`);
  }
};

run("check", "config", "deploy/prometheus/prometheus.yml");
run("check", "rules", "deploy/prometheus/alerts.yml");
run("test", "rules", "deploy/prometheus/alerts.test.yml");

const file = "deploy/grafana/sluice-backend.json";
const dashboard = JSON.parse(readFileSync(join(root, file), "utf8"));
const need = (ok, what) => ok || problems.push(`${file}: ${what}`);
need(typeof dashboard.title === "string" && dashboard.title, "no title");
need(typeof dashboard.uid === "string" && /^[a-zA-Z0-9_-]{1,40}$/.test(dashboard.uid), "uid must be 1-40 of [a-zA-Z0-9_-]");
need(Number.isInteger(dashboard.schemaVersion), "no schemaVersion");
const variables = new Map((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
need(variables.get("datasource")?.type === "datasource" && variables.get("datasource")?.query === "prometheus",
  "needs a `datasource` variable of type datasource (prometheus), so it imports into any Grafana");
const ids = new Set();
const exprs = [];
for (const panel of dashboard.panels ?? []) {
  const where = `panel ${panel.id} (${panel.title})`;
  need(Number.isInteger(panel.id) && !ids.has(panel.id), `${where}: id missing or repeated`);
  ids.add(panel.id);
  const g = panel.gridPos ?? {};
  need([g.x, g.y, g.w, g.h].every(Number.isInteger) && g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0,
    `${where}: gridPos must fit the 24-column grid`);
  if (panel.type === "row") continue;
  need(typeof panel.title === "string" && panel.title && typeof panel.description === "string" && panel.description,
    `${where}: a title and a description`);
  need(panel.datasource?.uid === "${datasource}", `${where}: must query the \${datasource} variable`);
  need(Array.isArray(panel.targets) && panel.targets.length > 0, `${where}: no queries`);
  for (const t of panel.targets ?? []) {
    need(t.datasource?.uid === "${datasource}", `${where}, query ${t.refId}: must use the \${datasource} variable`);
    need(typeof t.expr === "string" && t.expr.includes("sluice_"), `${where}, query ${t.refId}: no sluice_ metric`);
    exprs.push({ where: `${where}, query ${t.refId}`, expr: t.expr });
  }
}
const used = new Set(exprs.flatMap(({ expr }) => [...expr.matchAll(/\$(\w+)/g)].map((m) => m[1])));
for (const name of used) {
  need(variables.has(name) || name.startsWith("__"), `query variable $${name} is not defined`);
}

// Each query as a recording rule, the variables filled in as Grafana would.
const fill = (expr) =>
  expr.replaceAll("$__rate_interval", "5m").replaceAll("$__interval", "1m").replaceAll("$__range", "1h")
    .replace(/\$(\w+)/g, ".*");
const dir = mkdtempSync(join(tmpdir(), "sluice-dashboard-"));
try {
  const rules = ["groups:", "  - name: dashboard", "    rules:"];
  exprs.forEach(({ where, expr }, i) => {
    rules.push(`      # ${where.replace(/\n/g, " ")}`);
    rules.push(`      - record: dashboard:query_${i}`);
    rules.push(`        expr: ${JSON.stringify(fill(expr))}`);
  });
  const path = join(dir, "dashboard-queries.yml");
  writeFileSync(path, rules.join("\n") + "\n");
  run("check", "rules", path);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

if (problems.length) {
  console.error(`check-deploy: ${problems.length} problem(s)\n` + problems.join("\n"));
  process.exit(1);
}
console.log(`check-deploy: prometheus config, ${"alerting rules and their tests"}, dashboard (${ids.size} panels, ${exprs.length} queries) ok`);

// The dashboard's "Debugger" view in a real browser (Debian's chromium driven
// by playwright-core) against the real backend and MariaDB: an event posted
// to the backend's direct door (POST /v1/events, 202 after the commit)
// appears in the live tail within 2 s of its 202; a refused one (422) appears
// with its reason within 2 s (the door writes its sampled refusals every
// second, the tail polls every 500 ms); filters, pause/resume and a row's
// whole JSON; 1280 px wide, no console errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { Backend, eventually, root } from "../edge/harness.mjs";

const artifacts = path.join(root, "target/artifacts");
const backend = new Backend();
let browser, readToken, apiKey;

before(async () => {
  await backend.setup();
  await backend.createEnv("dbg", "a");
  readToken = (await backend.cli("env", "token", "dbg")).trim();
  apiKey = await backend.createKey("dbg");
  await backend.start();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await backend.drop();
});

/** POST /v1/events at the backend's direct door; returns the status and when it was answered. */
async function send(body) {
  const res = await fetch(`${backend.url}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  await res.text();
  return { status: res.status, at: Date.now() };
}

const rows = (page) =>
  page.getByTestId("tail").locator("tbody tr").evaluateAll((trs) =>
    trs.map((tr) => ({ kind: tr.dataset.kind, cells: [...tr.children].map((td) => td.textContent) })));

async function waitForRow(page, match, what, ms = 10_000) {
  return eventually(async () => (await rows(page)).find(match), { ms, every: 25, what });
}

test("debugger: a stored event within 2 s of its 202, a refusal with its reason, filters, pause, JSON", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("pageerror", (e) => problems.push(e.message));

  await page.goto(`${backend.url}/dashboard`);
  await page.fill("#env", "dbg");
  await page.fill("#token", readToken);
  await page.click("#settings button[type=submit]");
  await page.getByTestId("view-debugger").click();
  assert.ok(await page.getByTestId("debugger").isVisible());
  for (const id of ["live-chart", "rate", "by-event", "delivery"]) {
    assert.ok(!(await page.getByTestId(id).isVisible()), `the overview's ${id} is hidden`);
  }
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "tail live" });

  // A stored event: on the page within 2 s of its 202.
  const stored = await send({ event: "signup", user_id: "u-42", properties: { plan: "pro", seats: 3 } });
  assert.equal(stored.status, 202);
  await waitForRow(page, (r) => r.kind === "event" && r.cells[2] === "signup", "the signup row");
  const storedAfter = Date.now() - stored.at;
  const [row] = (await rows(page)).filter((r) => r.kind === "event");
  assert.deepEqual(row.cells.slice(1), ["track", "signup", "u-42"]);
  const timeCell = await page.getByTestId("tail").locator("tbody tr td").first().evaluate((td) => td.scrollWidth <= td.clientWidth);
  assert.ok(timeCell, "the time is not cut");

  // A refused one (an invalid event → 422): with its reason.
  const refused = await send({ event: "" });
  assert.equal(refused.status, 422);
  const rejected = await waitForRow(page, (r) => r.kind === "rejected", "the rejected row");
  const refusedAfter = Date.now() - refused.at;
  assert.equal(rejected.cells[1], "rejected");
  assert.equal(rejected.cells[2], "invalid_events");
  assert.ok(rejected.cells[3].length > 0, "the error message");
  console.log(`debugger: 202 → row ${storedAfter} ms, 422 → rejected row ${refusedAfter} ms`);
  assert.ok(storedAfter < 2000, `stored event shown ${storedAfter} ms after its 202`);
  assert.ok(refusedAfter < 2000, `refusal shown ${refusedAfter} ms after its 422`);

  // Click a row: its whole JSON.
  await page.getByTestId("tail").locator('tbody tr[data-kind="event"]').first().click();
  const json = JSON.parse(await page.getByTestId("dbg-json").textContent());
  assert.equal(json.kind, "event");
  assert.equal(json.event.name, "signup");
  assert.deepEqual(json.event.properties, { plan: "pro", seats: 3 });
  assert.equal(json.event.user_id, "u-42");
  assert.ok(json.event.context && json.event.received_at > 0);
  await page.getByTestId("tail").locator('tbody tr[data-kind="rejected"]').first().click();
  const sample = JSON.parse(await page.getByTestId("dbg-json").textContent());
  assert.equal(sample.code, "invalid_events");
  assert.match(sample.body, /"event":""/);
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, "dashboard-debugger.png"), fullPage: true });

  // Filters: an event name.
  await page.fill("#dbg-name", "checkout");
  await page.click("#dbg-filters button[type=submit]");
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "live again" });
  await eventually(async () => (await rows(page)).every((r) => r.cells[2] === "checkout"), { what: "list cleared" });
  await send({ event: "signup", user_id: "u-1" });
  await send({ event: "checkout", user_id: "u-7" });
  await waitForRow(page, (r) => r.cells[2] === "checkout", "checkout row");
  await send({ event: "checkout", user_id: "u-8" });
  await eventually(async () => (await rows(page)).filter((r) => r.kind === "event").length === 2, { what: "two checkouts" });
  assert.ok((await rows(page)).every((r) => r.cells[2] === "checkout"), "only the filtered name");

  // A user (user_id or anonymous_id), no name.
  await page.fill("#dbg-name", "");
  await page.fill("#dbg-user", "anon-9");
  await page.click("#dbg-filters button[type=submit]");
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "live again" });
  await send({ event: "view", user_id: "u-1" });
  await send({ event: "view", anonymous_id: "anon-9" });
  await waitForRow(page, (r) => r.cells[3] === "anon-9", "anon-9 row");
  await new Promise((r) => setTimeout(r, 1200));
  assert.deepEqual((await rows(page)).map((r) => r.cells[3]), ["anon-9"]);

  // Rejected only.
  await page.fill("#dbg-user", "");
  await page.getByTestId("dbg-rejected").check();
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "live again" });
  await send({ event: "fine" });
  assert.equal((await send("{not json")).status, 400);
  await waitForRow(page, (r) => r.kind === "rejected", "a rejected row");
  assert.ok((await rows(page)).every((r) => r.kind === "rejected"));

  // Pause holds new items back; resume shows them.
  await page.getByTestId("dbg-rejected").uncheck();
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "live again" });
  await page.getByTestId("dbg-pause").click();
  assert.equal(await page.getByTestId("dbg-state").textContent(), "paused");
  await send({ event: "while-paused" });
  await eventually(async () => (await page.getByTestId("dbg-counts").textContent()).includes("held while paused"), { what: "held" });
  assert.ok(!(await rows(page)).some((r) => r.cells[2] === "while-paused"), "not shown while paused");
  await page.getByTestId("dbg-pause").click();
  await waitForRow(page, (r) => r.cells[2] === "while-paused", "shown on resume", 2000);

  // Back to the overview: its charts are there again.
  await page.click("#view-overview");
  assert.ok(await page.getByTestId("live-chart").isVisible());
  assert.ok(!(await page.getByTestId("debugger").isVisible()));
  assert.deepEqual(problems, [], "no console errors");
  await page.close();
});

test("debugger at phone width: no horizontal scrolling, rows still readable", async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await page.goto(`${backend.url}/dashboard#debugger`);
  await page.fill("#env", "dbg");
  await page.fill("#token", readToken);
  await page.click("#settings button[type=submit]");
  await eventually(async () => (await page.getByTestId("dbg-state").textContent()) === "live", { what: "tail live" });
  assert.equal((await send({ event: "phone", user_id: "u-phone" })).status, 202);
  await waitForRow(page, (r) => r.cells[2] === "phone", "the phone row");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
  await page.screenshot({ path: path.join(artifacts, "dashboard-debugger-phone.png"), fullPage: true });
  await page.close();
});

// Sluice dashboard: summary and series over the read API, live updates over
// the SSE stream (read with fetch, so the token travels in a header).
import uPlot from "uplot";
import { renderDelivery } from "./delivery.js";

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
const LIVE_SECONDS = 300;

const settings = {
  env: localStorage.getItem("sluice.env") || new URLSearchParams(location.search).get("env") || "",
  token: localStorage.getItem("sluice.token") || "",
  range: Number(localStorage.getItem("sluice.range") || 86400000),
};

let live = new Map(); // second (ms) -> {total, by_event}
let liveChart, seriesChart, stream, lastId = null, lastTotal = -1;
let summaryRunning = false, summaryAgain = false;

// New events: refresh the range numbers at once; calls arriving while one
// is in flight coalesce into a single follow-up.
async function refreshSummary() {
  if (summaryRunning) {
    summaryAgain = true;
    return;
  }
  summaryRunning = true;
  try {
    do {
      summaryAgain = false;
      await loadSummary().catch((e) => showError(e.message));
    } while (summaryAgain);
  } finally {
    summaryRunning = false;
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function setStatus(on, text) {
  $("status").className = "status " + (on ? "on" : "off");
  $("status").textContent = text;
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + settings.token } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

/**
 * The y axis as wide as its longest label ("1,250,000"), which uPlot's fixed
 * 50 px would cut on the left.
 */
function fittedSize(self, values, axisIdx, cycleNum) {
  const axis = self.axes[axisIdx];
  if (cycleNum > 1) return axis._size;
  const longest = (values ?? []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
  self.ctx.font = axis.font[0];
  return Math.ceil(axis.ticks.size + axis.gap + self.ctx.measureText(longest).width / devicePixelRatio + 4);
}

function chart(el, label, old) {
  if (old) old.destroy();
  const width = Math.max(el.clientWidth, 280);
  return new uPlot({
    width, height: 220,
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8b98a5", grid: { stroke: "#263039" } },
      { stroke: "#8b98a5", grid: { stroke: "#263039" }, size: fittedSize, values: (u, ticks) => ticks.map((v) => fmt.format(v)) },
    ],
    series: [{}, { label, stroke: "#3fb6a8", fill: "rgba(63,182,168,.15)", width: 2 }],
  }, [[], []], el);
}

function renderTable(id, rows) {
  $(id).replaceChildren(...rows.map(({ name, count }) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = name;
    a.title = name;
    b.textContent = typeof count === "number" ? fmt.format(count) : count;
    tr.append(a, b);
    return tr;
  }));
}

async function loadSummary() {
  const to = Date.now();
  const from = to - settings.range;
  const q = `env=${encodeURIComponent(settings.env)}&from=${from}&to=${to}`;
  const interval = settings.range > 86400000 ? "hour" : "minute";
  const [summary, series, ledger] = await Promise.all([
    api(`/v1/stats/summary?${q}`),
    api(`/v1/stats/series?${q}&interval=${interval}`),
    api(`/v1/stats/delivery?${q}`),
  ]);
  renderDelivery(ledger, fmt, $);
  $("range-total").textContent = fmt.format(summary.events);
  $("range-label").textContent = `events in the last ${$("range").selectedOptions[0].textContent}`;
  renderTable("by-event", summary.by_event);
  renderTable("by-country", summary.by_country);
  $("users").textContent = fmt.format(summary.users);
  const metrics = Object.entries(summary.metrics || {});
  renderTable("metrics", metrics.length
    ? metrics.map(([name, value]) => ({ name, count: value === null ? "–" : value }))
    : [{ name: "none defined", count: "" }]);
  $("series-title").textContent = `Events per ${interval}`;
  seriesChart.setData([series.points.map((p) => p.t / 1000), series.points.map((p) => p.value)]);
}

function applyUpdate(update) {
  for (const s of update.seconds) live.set(s.t, s);
  const newest = update.id * 1000;
  for (const t of live.keys()) if (t <= newest - LIVE_SECONDS * 1000) live.delete(t);
  const seconds = [...live.values()].sort((a, b) => a.t - b.t);
  liveChart.setData([seconds.map((s) => s.t / 1000), seconds.map((s) => s.total)]);
  const total = seconds.reduce((n, s) => n + s.total, 0);
  const recent = seconds.filter((s) => s.t > newest - 10000);
  $("live-total").textContent = fmt.format(total);
  $("rate").textContent = (recent.reduce((n, s) => n + s.total, 0) / 10).toFixed(1);
  const last = seconds.filter((s) => s.total > 0).pop();
  $("last-event").textContent = last ? `${Math.max(0, Math.round((Date.now() - last.t) / 1000))} s` : "> 5 min";
  $("h-inserted").textContent = fmt.format(update.health.inserted_total);
  $("h-duplicates").textContent = fmt.format(update.health.duplicates_total);
  $("h-errors").textContent = fmt.format(update.health.shard_errors_total);
  if (total !== lastTotal) {
    lastTotal = total;
    refreshSummary();
  }
}

async function connect(generation) {
  let delay = 500;
  while (generation === stream) {
    try {
      const headers = { Authorization: "Bearer " + settings.token };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`/v1/stats/stream?env=${encodeURIComponent(settings.env)}`, { headers });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw Object.assign(new Error(body.message || response.statusText), { fatal: response.status < 500 });
      }
      setStatus(true, "live");
      showError("");
      delay = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== stream) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = null, data = null;
          for (const line of frame.split("\n")) {
            if (line.startsWith("id:")) id = line.slice(3).trim();
            else if (line.startsWith("data:")) data = line.slice(5).trim();
          }
          if (data) {
            lastId = id;
            applyUpdate(JSON.parse(data));
          }
        }
      }
      if (generation !== stream) return;
      throw new Error("stream ended");
    } catch (e) {
      if (generation !== stream) return;
      if (e.fatal) {
        setStatus(false, "not connected");
        showError(e.message);
        return;
      }
      setStatus(false, "disconnected — retrying");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

function start() {
  live = new Map();
  lastId = null;
  lastTotal = -1;
  liveChart = chart($("live-chart"), "events/s", liveChart);
  seriesChart = chart($("series-chart"), "events", seriesChart);
  stream = {};
  loadSummary().catch((e) => showError(e.message));
  connect(stream);
}

$("env").value = settings.env;
$("token").value = settings.token;
$("range").value = String(settings.range);
$("settings").addEventListener("submit", (e) => {
  e.preventDefault();
  settings.env = $("env").value.trim();
  settings.token = $("token").value.trim();
  settings.range = Number($("range").value);
  localStorage.setItem("sluice.env", settings.env);
  localStorage.setItem("sluice.token", settings.token);
  localStorage.setItem("sluice.range", String(settings.range));
  start();
});
$("range").addEventListener("change", () => {
  settings.range = Number($("range").value);
  localStorage.setItem("sluice.range", String(settings.range));
  if (settings.env && settings.token) loadSummary().catch((e) => showError(e.message));
});
window.addEventListener("resize", () => {
  for (const [c, el] of [[liveChart, "live-chart"], [seriesChart, "series-chart"]]) {
    if (c) c.setSize({ width: Math.max($(el).clientWidth, 280), height: 220 });
  }
});
setInterval(() => settings.env && settings.token && stream && loadSummary().catch(() => {}), 30000);
if (settings.env && settings.token) start();

// The "Debugger" view: the environment's live tail (GET /v1/stats/tail, SSE
// read with fetch so the token travels in a header): stored events and
// sampled refusals as they come, filters, pause/resume, a row's whole JSON.
// The stream is open only while the view is shown.

const MAX_ROWS = 500;

const time = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3, hour12: false,
});

export function initDebugger(getSettings, $, fmt) {
  let generation = null; // the open stream's token; null when closed
  let lastId = null;
  let paused = false;
  let held = []; // items that came while paused (newest last, bounded)
  let shown = 0, skipped = 0;
  let selected = null;

  const views = [...document.querySelectorAll("main > section, main > .cards")].filter((el) => el.id !== "debugger");

  function query() {
    const { env } = getSettings();
    const q = new URLSearchParams({ env });
    const name = $("dbg-name").value.trim();
    const user = $("dbg-user").value.trim();
    if (name) q.set("name", name);
    if (user) q.set("user", user);
    if ($("dbg-rejected").checked) q.set("rejected", "1");
    return q.toString();
  }

  function setState(text, on) {
    $("dbg-state").textContent = text;
    $("dbg-state").className = "dbg-state " + (on ? "on" : "off");
  }

  function counts() {
    $("dbg-counts").textContent = `${fmt.format(shown)} shown · ${fmt.format(skipped)} skipped over 200/s`
      + (held.length ? ` · ${fmt.format(held.length)} held while paused` : "");
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    td.title = text;
    if (cls) td.className = cls;
    return td;
  }

  function rowOf(kind, data) {
    const tr = document.createElement("tr");
    tr.dataset.kind = kind;
    if (kind === "event") {
      const e = data.event;
      tr.append(cell(time.format(data.stored_at)), cell(data.type, "type"), cell(e.name), cell(e.user_id || e.anonymous_id || "–"));
    } else if (kind === "rejected") {
      tr.append(cell(time.format(data.stored_at)), cell("rejected", "type bad"), cell(data.code), cell(data.message));
    } else {
      const text = kind === "skipped"
        ? `${fmt.format(data.skipped)} more not shown (over 200 per second)`
        : data.message;
      const td = cell(text);
      td.colSpan = 4;
      tr.className = "marker";
      tr.append(td);
      return tr;
    }
    tr.tabIndex = 0;
    tr.addEventListener("click", () => select(tr, data));
    tr.addEventListener("keydown", (ev) => ev.key === "Enter" && select(tr, data));
    return tr;
  }

  function select(tr, data) {
    if (selected) selected.classList.remove("selected");
    selected = tr;
    tr.classList.add("selected");
    $("dbg-json").textContent = JSON.stringify(data, null, 2);
    $("dbg-detail").hidden = false;
  }

  function render(items) {
    const body = $("dbg-rows");
    const rows = items.map(([kind, data]) => rowOf(kind, data)).reverse();
    body.prepend(...rows);
    while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
    $("dbg-empty").hidden = body.rows.length > 0;
  }

  function take(kind, data) {
    if (kind === "event" || kind === "rejected") shown += 1;
    if (kind === "skipped") skipped += data.skipped;
    if (paused) {
      held.push([kind, data]);
      if (held.length > MAX_ROWS) held.shift();
    } else {
      render([[kind, data]]);
    }
    counts();
  }

  async function connect(mine) {
    let delay = 500;
    while (mine === generation) {
      try {
        const { token } = getSettings();
        const headers = { Authorization: "Bearer " + token };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/v1/stats/tail?${query()}`, { headers });
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          throw Object.assign(new Error(body.message || response.statusText), { fatal: response.status < 500 });
        }
        setState(paused ? "paused" : "live", !paused);
        delay = 500;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done || mine !== generation) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let id = null, kind = "message", data = null;
            for (const line of frame.split("\n")) {
              if (line.startsWith("id:")) id = line.slice(3).trim();
              else if (line.startsWith("event:")) kind = line.slice(6).trim();
              else if (line.startsWith("data:")) data = line.slice(5).trim();
            }
            if (!data) continue;
            if (id) lastId = id;
            take(kind, JSON.parse(data));
          }
        }
        if (mine !== generation) return;
        throw new Error("stream ended");
      } catch (e) {
        if (mine !== generation) return;
        if (e.fatal) {
          setState(e.message, false);
          return;
        }
        setState("disconnected — retrying", false);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  function open() {
    const { env, token } = getSettings();
    generation = {};
    lastId = null;
    if (!env || !token) {
      setState("set an environment and a read token", false);
      return;
    }
    setState("connecting…", false);
    connect(generation);
  }

  function close() {
    generation = null;
  }

  function clear() {
    $("dbg-rows").replaceChildren();
    $("dbg-empty").hidden = false;
    $("dbg-detail").hidden = true;
    held = [];
    shown = skipped = 0;
    counts();
  }

  function active() {
    return location.hash === "#debugger";
  }

  function show() {
    const on = active();
    $("debugger").hidden = !on;
    for (const el of views) el.hidden = on;
    $("view-overview").classList.toggle("active", !on);
    $("view-debugger").classList.toggle("active", on);
    $("view-overview").setAttribute("aria-selected", String(!on));
    $("view-debugger").setAttribute("aria-selected", String(on));
    if (on && !generation) open();
    if (!on) {
      close();
      // The charts measure their width when shown again.
      window.dispatchEvent(new Event("resize"));
    }
  }

  $("view-overview").addEventListener("click", () => { history.replaceState(null, "", "#overview"); show(); });
  $("view-debugger").addEventListener("click", () => { history.replaceState(null, "", "#debugger"); show(); });
  window.addEventListener("hashchange", show);
  $("dbg-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    clear();
    if (active()) open();
  });
  $("dbg-rejected").addEventListener("change", () => $("dbg-filters").requestSubmit());
  $("dbg-pause").addEventListener("click", () => {
    paused = !paused;
    $("dbg-pause").textContent = paused ? "Resume" : "Pause";
    $("dbg-pause").setAttribute("aria-pressed", String(paused));
    if (!paused) {
      render(held);
      held = [];
      counts();
    }
    if (generation) setState(paused ? "paused" : "live", !paused);
  });
  $("dbg-clear").addEventListener("click", clear);
  $("dbg-close").addEventListener("click", () => {
    $("dbg-detail").hidden = true;
    if (selected) selected.classList.remove("selected");
    selected = null;
  });
  counts();
  show();

  return {
    /** New settings (environment, token): reopen the stream if shown. */
    restart() {
      close();
      clear();
      if (active()) open();
    },
  };
}

// The "Delivery" panel: the environment's delivery ledger for the range
// (GET /v1/stats/delivery), what was rejected and why, and a warning with the
// gap when settled minutes do not add up.

const ROWS = [
  ["received", "Received"],
  ["accepted", "Accepted"],
  ["stored", "Stored"],
  ["resent", "Re-sent by clients (already stored)"],
  ["dropped", "Dropped by policy"],
  ["dead_lettered", "Dead-lettered"],
  ["replayed", "… of them replayed since"],
  ["lost", "Lost (queue send failed)"],
  ["in_flight", "In flight"],
  ["redelivered", "Redelivered by the pipeline (not counted)"],
];

const sum = (value) => (typeof value === "number" ? value : Object.values(value || {}).reduce((a, b) => a + b, 0));

function row(name, value, title) {
  const tr = document.createElement("tr");
  const a = document.createElement("td");
  const b = document.createElement("td");
  a.textContent = name;
  a.title = title || name;
  b.textContent = value;
  tr.append(a, b);
  return tr;
}

/** Fills the panel's tables from a ledger answer. */
export function renderDelivery(ledger, fmt, $) {
  $("ledger").replaceChildren(...ROWS.map(([key, label]) => row(label, fmt.format(sum(ledger[key])), key)));
  const reasons = Object.entries(ledger.rejected || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  $("rejections").replaceChildren(...(reasons.length
    ? reasons.map(([code, n]) => row(code, fmt.format(n)))
    : [row("none", "")]));
  $("rejected-total").textContent = fmt.format(sum(ledger.rejected));
  const warning = $("unbalanced");
  warning.hidden = ledger.balanced;
  warning.textContent = ledger.balanced
    ? ""
    : `Not balanced: ${fmt.format(ledger.gap)} event${ledger.gap === 1 ? "" : "s"} of settled minutes (over 2 minutes old) not accounted for.`;
}

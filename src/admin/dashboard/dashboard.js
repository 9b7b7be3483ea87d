// The hubrelay site dashboard: polls GET /api/site on this admin address and draws it.
// The admin token lives in sessionStorage only (this tab's session) and is never put in the page.
// Every value is written with textContent or as an attribute, never as HTML.
"use strict";

const TOKEN_KEY = "hubrelay.adminToken";
const REFRESH_MS = 2000;

let timer = null;

// `#token=...` in the address is taken once into the session and removed from the address bar
// (and so from the history), for links and headless browsers that cannot type into the form.
function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  try {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  } catch (e) {
    // An unusable fragment is dropped like a used one.
  }
  history.replaceState(null, "", location.pathname + location.search);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(reason) {
  clearTimeout(timer);
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("site").hidden = true;
  document.getElementById("login").hidden = false;
  if (reason) document.getElementById("login-reason").textContent = reason;
  setStatus("login", "Waiting for the admin token.");
  document.getElementById("token-input").focus();
}

function setStatus(state, text) {
  const s = document.getElementById("status");
  s.dataset.state = state;
  s.textContent = text;
}

async function refresh() {
  clearTimeout(timer);
  const t = token();
  if (!t) {
    askForToken();
    return;
  }
  try {
    const r = await fetch("/api/site", {
      headers: { Authorization: "Bearer " + t },
      cache: "no-store",
    });
    if (r.status === 401) {
      askForToken("The admin token was refused: enter the site's admin token.");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    setStatus("error", "This admin address does not answer (" + e.message + "); retrying.");
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

// --- drawing ---------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function dash(v) {
  return v === null || v === undefined ? "–" : v;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function render(doc) {
  document.getElementById("login").hidden = true;
  document.getElementById("site").hidden = false;
  document.getElementById("site-name").textContent = doc.site;
  renderHubs(doc);
  renderCms(doc);
  renderCoverage(doc);
  const down = doc.hubs.filter((h) => !h.up).length +
    doc.cms.reduce((n, c) => n + c.unreachable.length, 0);
  setStatus(down ? "degraded" : "ok",
    "Updated " + new Date(doc.now_ms).toLocaleTimeString() + " from " + location.host +
    (down ? " — " + down + " role(s) not answering" : ""));
  document.getElementById("status").dataset.updated = doc.generated;
}

function storageGroups(doc) {
  return doc.coverage.map((c) => c.storage_group);
}

function renderHubs(doc) {
  const sgs = storageGroups(doc);
  const head = document.getElementById("hubs-head");
  head.replaceChildren(el("th", {}, "Hub"), el("th", {}, "State"), el("th", {}, "Queue"),
    el("th", {}, "Oldest queued"),
    ...sgs.map((sg) => el("th", {}, sg + " dumpster")));
  const rows = doc.hubs.map((h) => {
    const cells = sgs.map((sg) => {
      const d = h.dumpster.find((x) => x.storage_group === sg);
      if (!d) return el("td", { "data-dumpster": h.name + "/" + sg, "data-items": "" }, "–");
      return el("td", {
        "data-dumpster": h.name + "/" + sg,
        "data-items": d.items,
        "data-bytes": d.bytes,
        "data-oldest": d.oldest,
      }, d.items + (d.items === 1 ? " item, " : " items, ") + bytes(d.bytes),
      el("br"), el("small", {}, "oldest " + dash(d.oldest)));
    });
    return el("tr", {
      "data-hub": h.name,
      "data-up": h.up,
      "data-queue": dash(h.queue_messages),
    },
    el("th", {}, h.name),
    el("td", { class: "state" }, h.up ? "up" : "down", h.error ? el("small", {}, " " + h.error) : null,
      diskFull(h.disk)),
    el("td", {}, dash(h.queue_messages)),
    el("td", {}, age(h.queue_oldest_age_seconds)),
    ...cells);
  });
  document.querySelector("#hubs tbody").replaceChildren(...rows);
}

// "disk full" with the path, for a role short of min_free_space (new mail refused with 452).
function diskFull(readings) {
  const full = (readings || []).filter((r) => r.free_bytes < r.reserve_bytes);
  if (full.length === 0) return null;
  return el("small", { class: "disk-full", "data-disk-full": full[0].path },
    " · disk full: " + full.map((r) => r.path + " has " + bytes(r.free_bytes) + " free, less than " +
      bytes(r.reserve_bytes)).join("; "));
}

function renderCms(doc) {
  const boxes = doc.cms.map((c) => {
    const nodes = c.nodes.map((n) => el("li", {
      "data-node": n.name,
      "data-up": n.up,
      "data-role": n.up ? n.role : "Down",
    }, el("strong", {}, n.name), " ", n.up ? n.role : "down (not answering)",
    n.up ? " · epoch " + n.epoch + (n.sees_peer ? " · sees peer" : " · peer not seen") +
      (n.witness_ok ? "" : " · witness unavailable") : null, diskFull(n.disk)));
    const sgRows = c.storage_groups.map((g) => el("tr", {
      "data-copy": g.name,
      "data-generated": g.last_log_generated,
      "data-copied": dash(g.last_log_copied),
      "data-replayed": dash(g.last_log_replayed),
      "data-copy-status": dash(g.summary_copy_status),
    },
    el("th", {}, g.name),
    el("td", {}, g.last_log_generated),
    el("td", {}, dash(g.last_log_copied)),
    el("td", {}, dash(g.last_log_replayed)),
    el("td", { class: "copy-status" }, dash(g.summary_copy_status),
      g.error ? el("small", {}, " " + g.error) : null,
      g.copy_command ? el("small", {}, " (" + g.copy_command.command +
        (g.copy_command.comment ? ": " + g.copy_command.comment : "") + ")") : null),
    el("td", {}, g.newest_replayed ? el("small", {}, g.newest_replayed) : "–")));
    const outstanding = c.outstanding.length
      ? el("ul", {}, ...c.outstanding.map((o) => el("li", {
        "data-outstanding": o.hub + "/" + o.storage_group,
        class: o.error ? "alert" : null,
      }, o.hub + " · " + o.storage_group + " · " + o.low + " → " + (o.high || "when served") +
        (o.error ? " · refused: " + o.error : ""))))
      : el("p", { class: "quiet" }, "No outstanding resubmission requests.");
    return el("article", {
      "data-cms": c.name,
      "data-active": dash(c.active_node),
      "data-passive": dash(c.passive_node),
      "data-quorum": c.quorum,
      "data-witness": c.witness,
    },
    el("h3", {}, c.name),
    el("p", {}, "Active ", el("strong", {}, dash(c.active_node)), " · passive ",
      el("strong", {}, dash(c.passive_node)), " · quorum ",
      el("span", { class: "quorum" }, c.quorum), " · witness ",
      el("span", { class: "witness" }, c.witness)),
    c.dismounted_reason ? el("p", { class: "alert" }, "Dismounted: " + c.dismounted_reason) : null,
    ...c.failed_databases.map((f) => el("p", { class: "alert" }, "Database failed: " + f)),
    el("ul", { class: "nodes" }, ...nodes),
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Storage group"), el("th", {}, "LastLogGenerated"),
        el("th", {}, "LastLogCopied"), el("th", {}, "LastLogReplayed"),
        el("th", {}, "SummaryCopyStatus"), el("th", {}, "Newest replayed"))),
      el("tbody", {}, ...sgRows)),
    el("h4", {}, "Outstanding resubmission requests"),
    outstanding);
  });
  document.getElementById("cms").replaceChildren(...boxes);
}

// One timeline per storage group: a shared axis from the earliest point shown to now (right),
// the unreplicated window shaded, each hub's dumpster reach as a bar, red where no dumpster holds
// part of the window.
function renderCoverage(doc) {
  const figures = doc.coverage.map((c) => {
    const now = c.now_ms;
    // At least ten seconds, with the earliest point a little in from the left edge.
    const starts = [now];
    if (c.window_start_ms !== null) starts.push(c.window_start_ms);
    for (const h of c.hubs) if (h.reach_start_ms !== null) starts.push(h.reach_start_ms);
    const span = Math.max(10000, now - Math.min(...starts)) * 1.15;
    const from = now - span;
    const pct = (t) => (100 * (Math.min(now, Math.max(from, t)) - from) / span).toFixed(3) + "%";
    const width = (a, b) => (100 * Math.max(0, Math.min(now, b) - Math.max(from, a)) / span).toFixed(3) + "%";
    const windowFrom = c.has_passive ? (c.window_start_ms === null ? from : c.window_start_ms) : null;

    // Positions go through the CSSOM: the page's policy allows no inline style attribute.
    const bar = (cls, attrs, a, b) => {
      const e = el("div", Object.assign({ class: cls }, attrs));
      e.style.left = pct(a);
      e.style.width = width(a, b);
      return e;
    };

    const lanes = c.hubs.map((h) => {
      const track = el("div", { class: "track" });
      if (windowFrom !== null) track.append(bar("window", {}, windowFrom, now));
      if (h.reach_start_ms !== null) {
        track.append(bar("reach", { "data-reach": h.hub }, h.reach_start_ms, now));
      }
      if (h.state === "gap") {
        const gapFrom = h.gap_start_ms === null ? from : h.gap_start_ms;
        track.append(bar("gap", {
          "data-gap": h.hub,
          "data-gap-seconds": Math.round((h.gap_end_ms - gapFrom) / 1000),
        }, gapFrom, h.gap_end_ms));
      }
      const label = {
        covered: "covered",
        gap: "GAP",
        unknown: "hub down: reach unknown",
        no_window: "no passive copy",
      }[h.state];
      return el("div", { class: "lane", "data-lane": h.hub, "data-state": h.state },
        el("span", { class: "lane-name" }, h.hub),
        track,
        el("span", { class: "lane-state" }, label,
          h.reach_start_ms === null ? "" : " · reaches back " + age((now - h.reach_start_ms) / 1000)));
    });
    const summary = {
      covered: "Every hub's dumpster holds what it delivered in the window.",
      gap: "A failover now would lose mail no dumpster holds.",
      unknown: "A hub does not answer: its dumpster's reach is not known.",
      no_window: "No passive copy answers: nothing to fail over to.",
    }[c.state];
    const windowText = !c.has_passive ? "no passive copy"
      : c.window_start_ms === null ? "nothing replayed yet"
        : "unreplicated for " + age((now - c.window_start_ms) / 1000);
    return el("figure", {
      "data-timeline": c.storage_group,
      "data-state": c.state,
    },
    el("figcaption", {}, el("strong", {}, c.storage_group), " · " + windowText + " · " + summary),
    ...lanes,
    el("div", { class: "axis" }, el("span", {}, "−" + age(span / 1000)), el("span", {}, "now")));
  });
  document.getElementById("coverage").replaceChildren(...figures);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token-input");
    const t = input.value.trim();
    input.value = "";
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    setStatus("starting", "Loading…");
    refresh();
  });
  refresh();
});

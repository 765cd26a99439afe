// The board's page: a snapshot, then every event once, in seq order, from /api/stream
// (server-sent events). Untrusted text (titles, ids, actors) only ever goes into the page
// through textContent, setAttribute or createElement: never innerHTML.
"use strict";

(function () {
  const STATES = ["TODO", "IN_PROGRESS", "BLOCKED", "DONE"];
  const SVG = "http://www.w3.org/2000/svg";
  const board = {
    seq: 0, feedSize: 2000, plans: new Map(), items: new Map(), links: new Map(),
    feed: [], status: null, filters: { plan: "", actor: "", type: "" },
    seen: { plan: new Set(), actor: new Set(), type: new Set() },
    // for tests and the curious: counts, and when each item's card last moved (ms)
    stats: { snapshots: 0, events: 0, duplicates: 0, moves: {} },
  };
  window.__board = board;

  const $ = (id) => document.getElementById(id);

  // el("div", {class: "x", data: {itemId: "I-1"}}, "text", child, ...): no HTML parsing
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function age(ts) {
    const ms = Date.now() - Date.parse(ts);
    if (!isFinite(ms)) return "";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  function clock(ts) { return typeof ts === "string" ? ts.slice(11, 23) : ""; }

  // --- boards -------------------------------------------------------------------------

  function planSection(planId) {
    for (const section of $("boards").querySelectorAll("section.plan")) {
      if (section.dataset.planId === planId) return section;
    }
    const columns = el("div", { class: "columns" });
    for (const state of STATES) {
      columns.append(el("div", { class: "column", data: { state } },
        el("h3", {}, state.replace("_", " "), " ", el("span", { class: "count" }, "0")),
        el("div", { class: "cards" })));
    }
    const section = el("section", { class: "plan", data: { planId } },
      el("div", { class: "plan-head" }), columns, el("ul", { class: "plan-links" }));
    // plans in id order
    const after = [...$("boards").querySelectorAll("section.plan")]
      .find((s) => s.dataset.planId > planId);
    $("boards").insertBefore(section, after || null);
    $("no-plans").hidden = true;
    return section;
  }

  function renderPlanHead(plan) {
    const head = planSection(plan.plan_id).querySelector(".plan-head");
    clear(head);
    head.append(el("span", { class: "plan-id" }, plan.plan_id),
      el("span", { class: "plan-title" }, plan.title),
      el("span", { class: "muted" }, plan.status, " · v", plan.version, " · owner ",
        plan.owner_agent));
  }

  function linkLines(itemId) {
    const lines = [];
    for (const link of board.links.values()) {
      const verb = link.link_type === "DEPENDS_ON" ? "depends on" : "related to";
      if (link.from_item_id === itemId) lines.push(verb + " " + link.to_item_id);
      else if (link.to_item_id === itemId) {
        lines.push((link.link_type === "DEPENDS_ON" ? "needed by " : "related to ") + link.from_item_id);
      }
    }
    return lines;
  }

  function findCard(itemId) {
    for (const card of document.querySelectorAll(".card")) {
      if (card.dataset.itemId === itemId) return card;
    }
    return null;
  }

  function renderItem(item, changed) {
    const section = planSection(item.plan_id);
    const state = STATES.includes(item.state) ? item.state : "TODO";
    const old = findCard(item.item_id);
    const card = el("div", {
      class: "card" + (item.conflicts ? " has-conflict" : "") + (changed ? " changed" : ""),
      tabindex: "0", role: "button", title: "open the timeline of " + item.item_id,
      data: { itemId: item.item_id, state: item.state, version: item.version },
    },
      el("div", { class: "card-head" }, el("span", { class: "item-id" }, item.item_id),
        el("span", { class: "version" }, "v" + item.version)),
      el("div", { class: "title" }, item.title),
      el("div", { class: "meta" },
        el("span", { class: "assignee" }, item.assigned_to ? "@" + item.assigned_to : "unassigned"),
        el("span", { class: "age", data: { ts: item.updated_ts } }, age(item.updated_ts))));
    if (item.conflicts) {
      card.append(el("div", { class: "conflicts" }, "⚠ " + item.conflicts + " conflict" +
        (item.conflicts > 1 ? "s" : "") + " (last at seq " + item.last_conflict_seq + ")"));
    }
    const links = linkLines(item.item_id);
    if (links.length) card.append(el("ul", { class: "card-links" }, ...links.map((t) => el("li", {}, t))));
    card.addEventListener("click", () => openTimeline(item.item_id));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") openTimeline(item.item_id); });
    let target = null;
    for (const column of section.querySelectorAll(".column")) {
      if (column.dataset.state === state) target = column.querySelector(".cards");
    }
    const moved = !old || old.dataset.state !== card.dataset.state;
    if (old && !moved) old.replaceWith(card);
    else {
      if (old) old.remove();
      target.append(card);
    }
    if (moved && old) board.stats.moves[item.item_id] = Date.now();
    countColumns(section);
  }

  function countColumns(section) {
    for (const column of section.querySelectorAll(".column")) {
      column.querySelector(".count").textContent = String(column.querySelectorAll(".card").length);
    }
  }

  function renderLinks(planId) {
    const list = planSection(planId).querySelector(".plan-links");
    clear(list);
    for (const link of [...board.links.values()].filter((l) => l.plan_id === planId)) {
      list.append(el("li", {}, link.from_item_id, " ", link.link_type.toLowerCase().replace("_", " "),
        " ", link.to_item_id, " (", link.link_id, ")"));
    }
  }

  // --- feed ---------------------------------------------------------------------------

  function matches(entry) {
    const f = board.filters;
    return (!f.plan || entry.plan_id === f.plan) && (!f.actor || entry.actor === f.actor) &&
      (!f.type || entry.event_type === f.type);
  }

  function feedRow(entry) {
    const where = [entry.plan_id, entry.item_id].filter(Boolean).join(" / ");
    return el("li", { class: "feed-row" + (entry.conflict ? " conflict" : ""), data: { seq: entry.seq } },
      el("span", { class: "seq" }, "#" + entry.seq),
      el("span", { class: "time" }, clock(entry.ts)),
      el("span", { class: "type" }, entry.event_type, entry.conflict ? " ⚠" : ""),
      el("span", { class: "where" }, entry.actor, where ? " · " + where : ""),
      el("span", { class: "summary" }, entry.summary || ""));
  }

  function remember(entry) {
    for (const [key, value] of [["plan", entry.plan_id], ["actor", entry.actor], ["type", entry.event_type]]) {
      if (!value || board.seen[key].has(value)) continue;
      board.seen[key].add(value);
      const select = $("filter-" + key);
      const options = [...select.options].slice(1);
      const after = options.find((o) => o.value > value);
      select.insertBefore(el("option", { value }, value), after || null);
    }
  }

  function renderFeed() {
    const list = $("feed-list");
    clear(list);
    const rows = board.feed.filter(matches).slice(-500).reverse().map(feedRow);
    list.append(...rows);
  }

  function addFeed(entry) {
    board.feed.push(entry);
    if (board.feed.length > board.feedSize) board.feed.splice(0, board.feed.length - board.feedSize);
    remember(entry);
    if (!matches(entry)) return;
    const list = $("feed-list");
    list.insertBefore(feedRow(entry), list.firstChild);
    while (list.childElementCount > 500) list.removeChild(list.lastChild);
  }

  // --- status -------------------------------------------------------------------------

  function pill(id, level, ...content) {
    const node = $(id);
    node.className = "pill" + (level ? " " + level : "");
    const dd = node.querySelector("dd");
    if (id === "h-rates") return;
    clear(dd);
    dd.append(...content.filter((c) => c !== null && c !== undefined)
      .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  }

  function small(text) { return el("small", {}, text); }

  function renderStatus(s) {
    board.status = s;
    const c = s.chain;
    if (c.status === "BROKEN") pill("h-chain", "bad", "BROKEN at seq " + c.broken_at, small(c.breaks + " break(s)"));
    else if (c.status === "OK") pill("h-chain", "ok", "OK", small("seq " + (c.checked_from || 1) + "–" + c.checked_to));
    else pill("h-chain", "", "no events yet");
    const v = s.ledger_verify;
    const startup = v.startup_check ? "start-up: tail " + (v.startup_check.tail || "?") + ", pages " + (v.startup_check.pages || "?") : "";
    if (v.result) {
      pill("h-verify", v.result.chain_status === "OK" ? "ok" : "bad", v.result.chain_status,
        small("to seq " + v.result.head_seq + " at " + clock(v.at)), small(startup));
    } else {
      pill("h-verify", v.error ? "warn" : "", v.error ? "unavailable" : "not yet", small(startup));
    }
    pill("h-head", s.caught_up ? "" : "warn", String(s.head_seq),
      small(s.caught_up ? "shown: " + s.seq : "catching up: " + s.seq));
    const cp = s.checkpoint;
    if (cp.last) {
      pill("h-checkpoint", cp.last.verdict === "OK" ? "ok" : "bad", "seq " + cp.last.seq + " " + cp.last.verdict,
        small(cp.signature_checked ? "signature checked" : "signature not checked (no key)"));
    } else pill("h-checkpoint", "", "none yet", small(cp.signature_checked ? "key loaded" : "no key"));
    const b = s.broker.state;
    pill("h-broker", b === "up" ? "ok" : b === "unknown" ? "" : "bad", b,
      s.broker.restarts_seen ? small("restarts seen: " + s.broker.restarts_seen) : null);
    const up = s.ledger.up;
    pill("h-ledger", up === true ? "ok" : up === false ? "bad" : "", up === true ? "up" : up === false ? "down" : "unknown");
    renderRates(s.rates);
    const banner = $("banner");
    if (s.banner) {
      banner.className = "banner " + s.banner.level;
      banner.dataset.kind = s.banner.kind;
      banner.textContent = s.banner.text;
      banner.hidden = false;
    } else {
      banner.hidden = true;
      delete banner.dataset.kind;
    }
  }

  function renderRates(r) {
    $("rates-text").textContent = r.commands_last_window + " / " + r.conflicts_last_window;
    const svg = $("rates-chart");
    clear(svg);
    const width = 180, height = 36, n = r.commands.length;
    const peak = Math.max(1, ...r.commands);
    const bar = width / n;
    r.commands.forEach((count, i) => {
      const conflicts = r.conflicts[i];
      for (const [value, cls] of [[count, "cmd"], [conflicts, "conflict"]]) {
        if (!value) continue;
        const h = Math.max(1, (value / peak) * (height - 2));
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("class", cls);
        rect.setAttribute("x", String(i * bar));
        rect.setAttribute("y", String(height - h));
        rect.setAttribute("width", String(Math.max(1, bar - 0.5)));
        rect.setAttribute("height", String(h));
        svg.append(rect);
      }
    });
  }

  // --- the stream ---------------------------------------------------------------------

  function loadSnapshot(snap) {
    board.stats.snapshots += 1;
    board.seq = snap.seq;
    board.feedSize = snap.status.counts.feed_size || board.feedSize;
    board.plans = new Map(snap.plans.map((p) => [p.plan_id, p]));
    board.items = new Map(snap.items.map((i) => [i.item_id, i]));
    board.links = new Map(snap.links.map((l) => [l.link_id, l]));
    board.feed = [];
    for (const section of [...$("boards").querySelectorAll("section.plan")]) section.remove();
    $("no-plans").hidden = board.plans.size > 0;
    for (const plan of board.plans.values()) { renderPlanHead(plan); renderLinks(plan.plan_id); }
    for (const item of board.items.values()) renderItem(item, false);
    for (const entry of snap.feed) { board.feed.push(entry); remember(entry); }
    renderFeed();
    renderStatus(snap.status);
  }

  function applyEvent(change) {
    if (change.seq <= board.seq) { board.stats.duplicates += 1; return; }
    board.seq = change.seq;
    board.stats.events += 1;
    if (change.plan) {
      board.plans.set(change.plan.plan_id, change.plan);
      renderPlanHead(change.plan);
    }
    if (change.link) {
      const link = change.link;
      board.links.set(link.link_id, link);
      renderLinks(link.plan_id);
      for (const id of [link.from_item_id, link.to_item_id]) {
        const item = board.items.get(id);
        if (item) renderItem(item, false);
      }
    }
    if (change.item) {
      board.items.set(change.item.item_id, change.item);
      renderItem(change.item, true);
    }
    addFeed(change.entry);
  }

  function connect() {
    const stream = new EventSource("/api/stream");
    stream.addEventListener("snapshot", (e) => loadSnapshot(JSON.parse(e.data)));
    stream.addEventListener("event", (e) => applyEvent(JSON.parse(e.data)));
    stream.addEventListener("status", (e) => renderStatus(JSON.parse(e.data)));
    stream.addEventListener("open", () => { $("conn").hidden = true; });
    stream.addEventListener("error", () => {
      const conn = $("conn");
      conn.textContent = "Lost the connection to the board server; reconnecting…";
      conn.hidden = false;
    });
  }

  // --- item timeline (the L2 task timeline, from the ledger) --------------------------

  async function openTimeline(itemId) {
    const panel = $("timeline"), list = $("timeline-list"), status = $("timeline-status");
    $("timeline-title").textContent = "Timeline of " + itemId;
    panel.dataset.itemId = itemId;
    clear(list);
    status.textContent = "loading…";
    panel.hidden = false;
    try {
      const response = await fetch("/api/items/" + encodeURIComponent(itemId) + "/timeline",
        { credentials: "same-origin" });
      const body = await response.json();
      if (panel.dataset.itemId !== itemId) return;
      if (!response.ok) {
        status.textContent = "could not load: " + (body.error ? body.error.code + ": " + body.error.message : response.status);
        return;
      }
      status.textContent = body.events.length + " event(s)";
      for (const e of body.events) {
        const conflict = e.event_type === "PLAN_CONFLICT_DETECTED";
        list.append(el("li", { class: conflict ? "conflict" : "", data: { seq: e.seq } },
          "#" + e.seq + " " + clock(e.ts) + " " + e.event_type + " by " + e.actor +
          (e.summary ? " — " + e.summary : "")));
      }
    } catch (err) {
      status.textContent = "could not load: " + err;
    }
  }

  function start() {
    for (const key of ["plan", "actor", "type"]) {
      $("filter-" + key).addEventListener("change", (e) => {
        board.filters[key] = e.target.value;
        renderFeed();
      });
    }
    $("timeline-close").addEventListener("click", () => { $("timeline").hidden = true; });
    setInterval(() => {
      for (const span of document.querySelectorAll(".card .age")) span.textContent = age(span.dataset.ts);
    }, 1000);
    connect();
  }

  start();
})();

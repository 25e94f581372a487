// Blueplane Monitor's page: reads the JSON endpoints, draws with uPlot, refreshes itself.
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const state = { workspace: "", lastRowid: -1, charts: {}, query: "", view: "overview", convId: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok && r.status !== 404) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function qs(extra) {
    const p = new URLSearchParams();
    if (state.workspace) p.set("workspace", state.workspace);
    for (const [k, v] of Object.entries(extra || {})) if (v) p.set(k, v);
    const s = p.toString();
    return s ? "?" + s : "";
  }

  // ------------------------------------------------------------------ charts
  function drawChart(id, xs, series, opts) {
    const host = $("#" + id);
    const width = Math.max(260, host.clientWidth || 400);
    const data = [xs.map((t) => t / 1000), ...series.map((s) => s.values)];
    const sums = {};
    series.forEach((s) => { sums[s.label] = s.values.reduce((a, b) => a + b, 0); });
    for (const [k, v] of Object.entries(sums)) host.setAttribute("data-sum-" + k.replace(/\W+/g, "-"), String(v));
    host.setAttribute("data-points", String(xs.length));
    if (state.charts[id]) {
      state.charts[id].setData(data);
      return;
    }
    const bars = opts && opts.bars && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
    const colors = ["#2f6fdf", "#e07b39", "#2a9d8f"];
    state.charts[id] = new uPlot({
      width, height: 200,
      legend: { show: true },
      scales: { x: { time: true } },
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: colors[i % 3], width: 2,
        fill: bars ? colors[i % 3] + "55" : undefined, paths: bars,
      }))],
      axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => (v >= 1e6 ? v / 1e6 + "M" : v >= 1e3 ? v / 1e3 + "k" : v)) }],
    }, data, host);
  }

  function renderOverview(ov) {
    $("#empty-notice").hidden = !ov.empty;
    document.body.classList.toggle("empty", !!ov.empty);
    $("#total-traces").textContent = fmt(ov.totals.traces);
    $("#total-turns").textContent = fmt(ov.totals.turns);
    $("#total-input").textContent = fmt(ov.totals.input_tokens);
    $("#total-output").textContent = fmt(ov.totals.output_tokens);
    const days = ov.daily.length ? ov.daily : [];
    drawChart("chart-activity", days.map((d) => d.t), [
      { label: "traces", values: days.map((d) => d.traces) },
      { label: "turns", values: days.map((d) => d.turns) },
    ], { bars: days.length < 60 });
    drawChart("chart-hourly", ov.hourly.map((h) => h.t), [
      { label: "traces", values: ov.hourly.map((h) => h.traces) },
      { label: "turns", values: ov.hourly.map((h) => h.turns) },
    ], { bars: true });
    let tokenDays = days;
    if (state.tokens && state.tokens.source === "turns") {
      tokenDays = state.tokens.days.map((d) => ({ t: Date.parse(d.day + "T00:00:00Z"),
        input_tokens: d.input_tokens || 0, output_tokens: d.output_tokens || 0 }));
    }
    $("#chart-tokens").setAttribute("data-source", state.tokens ? state.tokens.source : "traces");
    drawChart("chart-tokens", tokenDays.map((d) => d.t), [
      { label: "input tokens", values: tokenDays.map((d) => d.input_tokens) },
      { label: "output tokens", values: tokenDays.map((d) => d.output_tokens) },
    ], { bars: tokenDays.length < 60 });

    const maxTurns = Math.max(1, ...ov.models.map((m) => m.turns));
    const mt = $("#models tbody");
    mt.replaceChildren(...ov.models.map((m) => el("tr", { "data-model": m.model, "data-turns": m.turns },
      el("td", {}, m.model), el("td", {}, fmt(m.turns)),
      el("td", { style: "width:40%" }, el("div", { class: "bar", style: `width:${(100 * m.turns) / maxTurns}%` })),
      el("td", {}, fmt(m.input_tokens) + " / " + fmt(m.output_tokens)))));
    if (!ov.models.length) mt.replaceChildren(el("tr", {}, el("td", { colSpan: 4, class: "muted" }, "No model seen yet")));
    const paths = state.paths || {};
    const wt = $("#workspaces tbody");
    wt.replaceChildren(...ov.workspaces.map((w) => el("tr", { "data-workspace": w.workspace_hash || "" },
      el("td", { title: w.workspace_hash || "" }, paths[w.workspace_hash] || w.workspace_hash || "(none)"),
      el("td", {}, fmt(w.traces)), el("td", {}, fmt(w.turns)),
      el("td", {}, fmt(w.input_tokens) + " / " + fmt(w.output_tokens)))));
  }

  function renderFeed(traces, previous) {
    const known = new Set(previous || []);
    const ol = $("#feed");
    ol.replaceChildren(...traces.map((t) => {
      const meta = [t.timestamp || "", t.trace_type + (t.revision ? " r" + t.revision : ""), t.role, t.model,
        t.input_tokens !== null && t.input_tokens !== undefined ? `${fmt(t.input_tokens)} in / ${fmt(t.output_tokens)} out` : null]
        .filter(Boolean).join(" · ");
      return el("li", { class: known.size && !known.has(t.event_id) ? "fresh" : "", "data-event-id": t.event_id },
        el("div", { class: "meta" }, meta), el("div", { class: "text" }, t.text || ""));
    }));
    if (!traces.length) ol.replaceChildren(el("li", { class: "muted" }, "No trace yet"));
    $("#feed-updated").textContent = "updated " + new Date().toLocaleTimeString();
    state.feedIds = traces.map((t) => t.event_id);
  }

  async function loadConversations() {
    const data = await getJSON("/api/conversations" + qs({ q: state.query }));
    const ul = $("#conversations");
    ul.replaceChildren(...data.conversations.map((c) => el("li", { "data-conversation-id": c.conversation_id },
      el("a", { href: "#conversation/" + encodeURIComponent(c.conversation_id) }, c.title || "Untitled conversation"),
      el("div", { class: "muted" }, [c.last_at || c.first_at || "", (c.models || []).join(", "), `${fmt(c.turns)} turns`,
        `${fmt(c.input_tokens)} in / ${fmt(c.output_tokens)} out`].filter(Boolean).join(" · ")))));
    $("#conversations-note").textContent = data.conversations.length ? "" :
      (state.query ? `No conversation matches “${state.query}”.` : "No conversation yet.");
  }

  async function loadHealth() {
    const h = await getJSON("/api/health");
    const badge = $("#health-badge");
    badge.textContent = h.running ? "server running" : "server not running";
    badge.className = "badge " + (h.running ? "ok" : "bad");
    const st = h.stream || {};
    const lines = [el("div", {}, h.running ? `Server running, pid ${h.server.pid}, since ${h.server.started_at}` : "Server not running" + (h.server && h.server.stopped_at ? `, stopped at ${h.server.stopped_at}` : "")),
      el("div", {}, st.reachable ? `Redis ${st.url}: stream length ${fmt(st.stream_length)}, consumer lag ${fmt(st.consumer_lag)}, pending ${fmt(st.pending)}, dead-lettered ${fmt(st.dead_letter_length)}` : `Redis ${st.url || ""}: unreachable ${st.error || ""}`)];
    for (const [name, c] of Object.entries(h.components || {})) {
      const counters = Object.entries(c.counters || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      lines.push(el("div", { class: "component", "data-component": name }, `${name}: ${c.status}${counters ? " (" + counters + ")" : ""}${c.last_error ? " — last error: " + c.last_error : ""}`));
    }
    const ws = Object.entries(h.workspaces || {});
    if (ws.length) lines.push(el("div", { class: "muted" }, `${ws.length} monitored workspace(s): ` + ws.map(([k, w]) => `${w.workspace_path || k} ${w.status || ""}`).join("; ")));
    $("#health").replaceChildren(...lines);
  }

  async function loadWorkspaces() {
    const data = await getJSON("/api/workspaces");
    state.paths = Object.fromEntries(data.workspaces.map((w) => [w.workspace_hash, w.workspace_path]));
    const sel = $("#workspace");
    const current = sel.value;
    sel.replaceChildren(el("option", { value: "" }, "All workspaces"),
      ...data.workspaces.map((w) => el("option", { value: w.workspace_hash }, w.workspace_path || w.workspace_hash)));
    sel.value = current;
  }

  async function refresh() {
    const [ov, feed, tokens] = await Promise.all([getJSON("/api/overview" + qs()),
      getJSON("/api/feed" + qs()), getJSON("/api/tokens" + qs())]);
    state.tokens = tokens;
    await loadWorkspaces();
    renderOverview(ov);
    renderFeed(feed.traces, state.feedIds);
    state.lastRowid = ov.last_rowid;
    await loadConversations();
    document.body.setAttribute("data-last-rowid", String(ov.last_rowid));
  }

  // ------------------------------------------------------------------ conversation page
  async function showConversation(id) {
    const c = await getJSON("/api/conversations/" + encodeURIComponent(id));
    $("#overview-view").hidden = true;
    $("#conversation-view").hidden = false;
    if (c.error) {
      $("#conversation-title").textContent = c.error;
      $("#conversation-meta").textContent = "";
      $("#turns").replaceChildren();
      return;
    }
    $("#conversation-title").textContent = c.title || "Untitled conversation";
    $("#conversation-meta").textContent = [c.workspace_path || c.workspace_hash, (c.models || []).join(", "),
      `${fmt(Array.isArray(c.turns) ? c.turns.length : c.turns)} turns`, `${fmt(c.input_tokens)} in / ${fmt(c.output_tokens)} out tokens`,
      c.first_at ? `${c.first_at} – ${c.last_at}` : null].filter(Boolean).join(" · ");
    $("#turns").replaceChildren(...c.turns.map((t, i) => el("article", {
      class: "turn", "data-generation-id": t.generation_id || "", "data-input-tokens": t.input_tokens ?? "", "data-output-tokens": t.output_tokens ?? "" },
      el("div", { class: "muted" }, `Turn ${i + 1}` + (t.started_at ? " · " + t.started_at : "")),
      t.prompt ? el("div", { class: "who" }, "You") : null,
      t.prompt ? el("div", { class: "msg prompt" }, t.prompt) : null,
      el("div", { class: "who assistant" }, "Assistant", el("span", { class: "muted tokens" },
        ` · ${t.model || "unknown model"} · ${fmt(t.input_tokens)} in / ${fmt(t.output_tokens)} out tokens` +
        (t.duration_ms !== null && t.duration_ms !== undefined ? ` · ${(t.duration_ms / 1000).toFixed(1)} s` : ""))),
      el("div", { class: "msg response" }, t.response || "(no text captured)"),
      t.tools && t.tools.length ? el("div", { class: "tools" }, "Tools: " + t.tools.map((x) =>
        `${x.name}${x.ok === false ? " (failed)" : ""}${x.duration_ms !== null && x.duration_ms !== undefined ? " " + x.duration_ms + " ms" : ""}`).join(", ")) : null)));
  }

  function route() {
    const m = location.hash.match(/^#conversation\/(.+)$/);
    if (m) {
      state.view = "conversation";
      state.convId = decodeURIComponent(m[1]);
      showConversation(state.convId).catch(report);
    } else {
      state.view = "overview";
      $("#overview-view").hidden = false;
      $("#conversation-view").hidden = true;
    }
  }

  function report(e) { console.error(e); }

  async function poll() {
    try {
      const v = await getJSON("/api/version");
      if (v.last_rowid !== state.lastRowid) {
        await refresh();
        if (state.view === "conversation" && state.convId) await showConversation(state.convId);
      }
    } catch (e) { report(e); }
    setTimeout(poll, 1000);
  }

  let searchTimer = null;
  $("#search").addEventListener("input", (ev) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.query = ev.target.value.trim(); loadConversations().catch(report); }, 200);
  });
  $("#workspace").addEventListener("change", (ev) => { state.workspace = ev.target.value; refresh().catch(report); });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => {
    for (const [id, u] of Object.entries(state.charts)) u.setSize({ width: Math.max(260, $("#" + id).clientWidth), height: 200 });
  });
  route();
  refresh().then(() => document.body.setAttribute("data-ready", "1")).catch(report);
  loadHealth().catch(report);
  setInterval(() => loadHealth().catch(report), 2000);
  setTimeout(poll, 1000);
})();

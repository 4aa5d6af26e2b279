// The console's core: sign-in, the pipeline list, the selected pipeline's live rows (SSE), its
// chart (stored history from /data plus the rows seen live) and its numbers. The operations
// panels (dead letters, sinks, lag, replay) are in panels.js, the chart in chart.js.
"use strict";
(function () {
  const DP = window.DP;
  const { $, el, notice, pipelinePath, get, errorText, fmtTime, fmtTicks, zoneName, fmtAge } = DP.h;
  const MAX_KEPT = 2000;          // rows kept for the chart's live tail and the rate
  const MAX_ROWS = 50;            // rows shown in the table
  const LIST_REFRESH_MS = 15000;  // the pipeline list
  const OPS_REFRESH_MS = 10000;   // the selected pipeline's panels
  const HISTORY_REFRESH_MS = 30000;
  const RATE_WINDOW_MS = 60000;
  const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  const AUTO_BUCKET = { "15m": "10s", "1h": "1m", "6h": "5m", "24h": "15m", "7d": "1h" };
  const BUCKETS = { "10s": 10, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400 };
  const MAX_BUCKETS = 10000;      // the data API's limit
  const DEFAULT_FIELDS = 3;

  // What a test (or a curious person in the console) can read; kept current.
  const state = window.dashpipe = {
    pipelines: [], selected: null, live: false, utc: false,
    available: [], fields: [], range: "1h", bucket: "auto", agg: "avg",
    rows: [],  // the rows in the table, newest first
    chart: { source: null, query: null, x: [], series: {}, liveRows: 0, zoom: null, error: null },
    stats: { rate: null, newest: null },
    deadLetters: null, lag: null, redrive: null, replay: null,
  };

  let gen = 0;            // bumped on every selection: late answers of an older one are dropped
  let source = null;      // the EventSource of the selected pipeline
  let kept = [];          // [{row, t, live, at}] oldest first (by arrival), up to MAX_KEPT
  let seen = new Set();   // rowId() of the rows kept (live rows and `recent` overlap)
  let history = null;     // {points, to (ms), key} from /data, for the stored rows
  let historyAt = 0;
  let subscribedAt = 0;
  let listTimer = null, opsTimer = null;
  let chart = null;

  function current() { return state.pipelines.find((p) => p.id === state.selected) || null; }
  function isNumber(v) { return typeof v === "number" && Number.isFinite(v); }
  DP.u = { $, el, get, errorText, pipelinePath, fmtTime, fmtAge, zoneName, current, notice,
           state, mine: () => gen };

  // ---------- session ----------
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";  // the token lives only in this handler, long enough to be posted
    if (!token) return;
    $("login-error").textContent = "";
    let r;
    try {
      r = await fetch("/api/session", { method: "POST", credentials: "same-origin",
                                         headers: { Authorization: "Bearer " + token } });
    } catch (e) {
      $("login-error").textContent = "Cannot reach the server.";
      return;
    }
    if (!r.ok) {
      $("login-error").textContent = "Sign-in failed: " + await errorText(r);
      input.focus();
      return;
    }
    await loadPipelines();
  });

  $("logout").addEventListener("click", async () => {
    try { await fetch("/api/session", { method: "DELETE", credentials: "same-origin" }); }
    catch (e) { /* signed out locally anyway */ }
    signedOut();
  });

  function signedOut() {
    select(null);
    state.pipelines = [];
    clearInterval(listTimer);
    listTimer = null;
    $("pipelines").replaceChildren();
    $("app").hidden = true;
    $("list-section").hidden = true;
    $("logout").hidden = true;
    $("login-section").hidden = false;
    notice("");
    $("token").focus();
  }

  function signedIn() {
    $("login-section").hidden = true;
    $("app").hidden = false;
    $("list-section").hidden = false;
    $("logout").hidden = false;
    if (!listTimer) listTimer = setInterval(loadPipelines, LIST_REFRESH_MS);
  }

  // ---------- time zone ----------
  for (const input of document.querySelectorAll("input[name=tz]")) {
    input.addEventListener("change", () => {
      state.utc = $("tz-utc").checked;
      renderAll();
    });
  }

  // ---------- pipeline list ----------
  async function loadPipelines() {
    let r;
    try { r = await get("/api/pipelines"); }
    catch (e) { notice("Cannot reach the server; retrying."); return; }
    if (r.status === 401) { signedOut(); return; }
    if (!r.ok) { notice("Could not load the pipelines: " + await errorText(r)); return; }
    state.pipelines = (await r.json()).pipelines || [];
    notice("");
    signedIn();
    renderPipelines();
    applyHash();
    $("hint").hidden = !!state.selected || !state.pipelines.length;
    const p = current();
    if (p) DP.panels.renderSinks(p);
  }
  DP.u.loadPipelines = loadPipelines;

  function deadTotal(p) { return Object.values(p.dead_letters || {}).reduce((a, b) => a + b, 0); }

  function renderPipelines() {
    $("pipelines").replaceChildren(...state.pipelines.map((p) => {
      const dead = deadTotal(p);
      const status = p.status || "active";
      const li = el("li", { dataset: { pipelineId: p.id },
                            "aria-current": p.id === state.selected ? "true" : null },
        el("a", { href: "#pipeline=" + encodeURIComponent(p.id), class: "name" }, p.name || p.id),
        el("span", { class: "status status-" + status }, status),
        el("div", { class: "pid" }, p.id + (p.type ? " · " + p.type : "")),
        dead ? el("div", { class: "dead", title: Object.entries(p.dead_letters || {})
          .map(([s, n]) => s + ": " + n).join(", ") }, dead + " dead letter" + (dead === 1 ? "" : "s"))
          : null,
        p.error_message ? el("div", { class: "error-message" }, p.error_message) : null);
      li.addEventListener("click", (e) => {
        if (e.target.closest("a")) return;  // the link sets the hash itself
        location.hash = "pipeline=" + encodeURIComponent(p.id);
      });
      return li;
    }));
    $("no-pipelines").hidden = state.pipelines.length > 0;
  }

  function hashId() { return new URLSearchParams(location.hash.slice(1)).get("pipeline"); }

  function applyHash() {
    const id = hashId();
    const known = state.pipelines.find((p) => p.id === id);
    if (id && !known) {
      select(null);
      notice("Pipeline '" + id + "' not found.");
      return;
    }
    if (id !== state.selected) select(id);
    else if (known) { refreshFields(known); renderHead(known); }  // it may have changed
  }
  window.addEventListener("hashchange", () => { if (!$("list-section").hidden) applyHash(); });

  // ---------- selection ----------
  function select(id) {
    gen += 1;
    if (source) { source.close(); source = null; }
    clearInterval(opsTimer);
    opsTimer = null;
    state.selected = id;
    state.live = false;
    state.available = []; state.fields = [];
    state.rows = [];
    state.chart = { source: null, query: null, x: [], series: {}, liveRows: 0, zoom: null, error: null };
    state.deadLetters = null; state.lag = null; state.redrive = null; state.replay = null;
    kept = []; seen = new Set(); history = null; historyAt = 0;
    for (const li of $("pipelines").children) {
      if (li.dataset.pipelineId === id) li.setAttribute("aria-current", "true");
      else li.removeAttribute("aria-current");
    }
    const p = id && current();
    $("detail").hidden = !p;
    $("hint").hidden = !!p || $("list-section").hidden || !state.pipelines.length;
    if (!p) return;
    notice("");
    renderHead(p);
    $("live-state").textContent = "Connecting…";
    if (chart) chart.zoom = null;
    refreshFields(p);
    startLive(id, gen);  // subscribe first: rows between `recent` and `ready` are not lost
    loadRecent(id, gen);
    DP.panels.reset(p);
    DP.panels.refresh(p, gen);
    opsTimer = setInterval(() => { const q = current(); if (q) DP.panels.refresh(q, gen); },
                           OPS_REFRESH_MS);
    renderAll();
  }

  function renderHead(p) {
    $("detail-title").textContent = p.name || p.id;
    $("detail-id").textContent = p.id + " · " + (p.type || "") + " · " + (p.source_type || "") +
      (p.persist_data ? " · stored" : " · not stored");
    const status = p.status || "active";
    $("detail-status").className = "status status-" + status;
    $("detail-status").textContent = status;
  }

  // ---------- fields and chart controls ----------
  function numericFieldsOf(p) {
    const fields = (p && p.data_mapping && p.data_mapping.fields) || {};
    return Object.keys(fields).filter((name) => {
      const spec = fields[name];
      return spec && typeof spec === "object" && (spec.type === "integer" || spec.type === "float");
    });
  }

  function refreshFields(p) {
    let names = numericFieldsOf(p);
    if (!names.length) {  // no typed numbers: the numeric fields seen in the rows
      for (const { row } of kept) for (const [k, v] of Object.entries(row.fields || {})) {
        if (isNumber(v) && !names.includes(k)) names.push(k);
      }
    }
    if (names.join("\n") === state.available.join("\n")) return;
    const had = state.available.length > 0;
    state.available = names;
    const keep = state.fields.filter((f) => names.includes(f));
    state.fields = keep.length || had ? keep : names.slice(0, DEFAULT_FIELDS);
    renderFieldBoxes();
    loadHistory(gen);
  }

  function renderFieldBoxes() {
    const box = $("fields");
    if (!state.available.length) {
      box.replaceChildren(el("span", { class: "muted" }, "no numeric field yet"));
      return;
    }
    box.replaceChildren(...state.available.map((f, i) => {
      const input = el("input", { type: "checkbox", id: "field-" + f, value: f,
                                  checked: state.fields.includes(f) });
      input.addEventListener("change", () => {
        state.fields = state.available.filter((n) => n === f ? input.checked : state.fields.includes(n));
        loadHistory(gen);
        renderChart();
      });
      return el("label", { class: "check", for: "field-" + f }, input,
                el("span", { class: "swatch c" + (i % DP.COLORS.length) }), f);
    }));
  }

  // the field's colour is its position among the available ones, checked or not
  function colored(fields) { return fields.map((f) => state.available.indexOf(f)); }

  for (const input of document.querySelectorAll("input[name=range]")) {
    input.addEventListener("change", () => {
      state.range = input.value;
      if (chart) chart.zoom = null;
      state.chart.zoom = null;
      loadHistory(gen);
      renderChart();
    });
  }
  $("bucket").addEventListener("change", () => { state.bucket = $("bucket").value; loadHistory(gen); renderChart(); });
  $("agg").addEventListener("change", () => { state.agg = $("agg").value; loadHistory(gen); renderChart(); });
  $("reset-zoom").addEventListener("click", () => { if (chart) chart.setZoom(null); });

  function bucketName() {
    const name = state.bucket === "auto" ? AUTO_BUCKET[state.range] : state.bucket;
    // a bucket too fine for the range would exceed the data API's limit: the next one up
    const names = Object.keys(BUCKETS);
    let i = names.indexOf(name);
    while (i < names.length - 1 && RANGES[state.range] / BUCKETS[names[i]] > MAX_BUCKETS) i += 1;
    return names[i];
  }

  // ---------- rows ----------
  async function loadRecent(id, mine) {
    let r;
    try { r = await get(pipelinePath(id, "/recent?limit=500")); } catch (e) { return; }
    if (mine !== gen) return;
    if (r.status === 401) { loadPipelines(); return; }
    if (!r.ok) { notice("Could not load recent rows: " + await errorText(r)); return; }
    const body = await r.json();
    if (mine !== gen) return;
    const fresh = (body.rows || []).filter((row) => !seen.has(rowId(row)));
    fresh.forEach((row) => seen.add(rowId(row)));
    // older than any live row already here: they go first
    kept = fresh.map((row) => ({ row, t: Date.parse(row.time), live: false, at: null }))
      .concat(kept).slice(-MAX_KEPT);
    afterRows();
  }

  async function loadHistory(mine) {
    const p = current();
    if (!p || !p.persist_data || !state.fields.length) {
      history = null;
      renderChart();
      return;
    }
    const bucket = bucketName();
    const bucketMs = BUCKETS[bucket] * 1000;
    const now = Date.now();
    const to = Math.floor(now / bucketMs) * bucketMs;  // whole buckets; the rest comes live
    const from = now - RANGES[state.range] * 1000;
    const query = { from: new Date(from).toISOString(), to: new Date(to).toISOString(),
                    fields: state.fields.join(","), bucket, agg: state.agg };
    const key = JSON.stringify([query.fields, bucket, state.agg, state.range]);
    historyAt = now;
    if (to <= from) { history = { points: [], to, key, query }; renderChart(); return; }
    let r;
    try { r = await get(pipelinePath(p.id, "/data?" + new URLSearchParams(query))); }
    catch (e) { state.chart.error = "cannot reach the server"; return; }
    if (mine !== gen) return;
    if (!r.ok) {
      state.chart.error = "history unavailable: " + await errorText(r);
      history = null;
      renderChart();
      return;
    }
    const body = await r.json();
    const now2 = JSON.stringify([state.fields.join(","), bucketName(), state.agg, state.range]);
    if (mine !== gen || now2 !== key) return;  // the controls changed meanwhile
    state.chart.error = null;
    history = { points: body.points || [], to, key, query, source: body.source };
    renderChart();
  }

  // ---------- live ----------
  function startLive(id, mine) {
    const es = new EventSource(pipelinePath(id, "/events"));
    source = es;
    es.addEventListener("ready", () => {
      if (mine !== gen) return;
      state.live = true;
      subscribedAt = Date.now();
      $("live-state").textContent = "Live";
      $("live-state").className = "live on";
    });
    es.addEventListener("row", (event) => {
      if (mine !== gen) return;
      let row;
      try { row = JSON.parse(event.data); } catch (e) { return; }
      if (row.id === undefined && event.lastEventId) row.id = event.lastEventId;
      const key = rowId(row);
      if (seen.has(key)) return;
      seen.add(key);
      kept.push({ row, t: Date.parse(row.time), live: true, at: Date.now() });
      if (kept.length > MAX_KEPT) kept.splice(0, kept.length - MAX_KEPT);
      afterRows();
    });
    es.onerror = () => {
      if (mine !== gen) return;
      state.live = false;
      $("live-state").className = "live";
      if (es.readyState !== EventSource.CLOSED) {
        $("live-state").textContent = "Reconnecting…";
        return;
      }
      // refused (an expired session, a deleted pipeline): find out which, then try again
      $("live-state").textContent = "Disconnected";
      loadPipelines().then(() => {
        setTimeout(() => { if (mine === gen && state.selected === id) select(id); }, 5000);
      });
    };
  }

  // A row is known by its lineage (a re-mapped duplicate has the same one), else by its id.
  function rowId(row) {
    const l = row.lineage;
    return l ? [l.raw_partition, l.raw_offset, l.row_index].join("/") : String(row.id);
  }

  // Rows can come faster than frames: the table, chart and numbers are redrawn once a frame.
  let drawing = false;
  function afterRows() {
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => { drawing = false; redrawRows(); });
  }

  function redrawRows() {
    state.rows = kept.slice(-MAX_ROWS).map((k) => k.row).reverse();
    const p = current();
    if (p && !state.available.length) refreshFields(p);  // no mapping: discover the fields
    renderRows();
    renderChart();
    renderStats();
  }

  // ---------- rendering ----------
  function renderAll() {
    renderRows();
    renderChart();
    renderStats();
    const p = current();
    if (p) DP.panels.render(p);
  }

  function renderRows() {
    const p = current();
    const columns = Object.keys((p && p.data_mapping && p.data_mapping.fields) || {});
    for (const row of state.rows) {
      for (const k of Object.keys(row.fields || {})) if (!columns.includes(k)) columns.push(k);
    }
    $("rows").tHead.rows[0].replaceChildren(el("th", { scope: "col" }, "time (" + zoneName() + ")"),
                                            ...columns.map((c) => el("th", { scope: "col" }, c)));
    $("rows").tBodies[0].replaceChildren(...state.rows.map((row) => el("tr",
      { dataset: { rowId: rowId(row) } },
      el("td", { class: "nowrap" }, el("time", { datetime: row.time }, fmtTime(Date.parse(row.time)))),
      ...columns.map((c) => {
        const v = (row.fields || {})[c];
        if (v === null || v === undefined) return el("td", { class: "null" }, "null");
        return el("td", { class: typeof v === "number" ? "num" : null },
                  typeof v === "object" ? JSON.stringify(v) : String(v));
      }))));
    $("rows-empty").hidden = state.rows.length > 0;
  }

  function renderChart() {
    const p = current();
    if (!p) return;
    if (!chart) {
      chart = new DP.Chart($("chart"), (zoom) => {
        state.chart.zoom = zoom;
        $("reset-zoom").hidden = !zoom;
      });
    }
    const fields = state.fields;
    const bucket = bucketName();
    const bucketMs = BUCKETS[bucket] * 1000;
    const now = Date.now();
    const from = now - RANGES[state.range] * 1000;
    const stored = !!(history && p.persist_data);
    const tailFrom = stored ? history.to : from;
    const tail = kept.filter((k) => Number.isFinite(k.t) && k.t >= tailFrom && k.t <= now + 60000)
      .map((k) => ({ t: k.t, fields: k.row.fields }));
    const live = DP.aggregate(tail, fields, bucketMs, state.agg);
    const points = (stored ? history.points.map((pt) => ({
      t: Date.parse(pt.time), values: fields.map((f) => (isNumber(pt[f]) ? pt[f] : null)) }))
      .filter((pt) => pt.t >= from - bucketMs) : []).concat(live);
    const x = points.map((pt) => pt.t / 1000);
    const ys = fields.map((f, i) => points.map((pt) => pt.values[i]));
    state.chart.source = stored ? "stored rows + live rows" : "live rows";
    state.chart.query = stored ? history.query : null;
    state.chart.bucket = bucket;
    state.chart.x = x;
    state.chart.series = Object.fromEntries(fields.map((f, i) => [f, ys[i]]));
    state.chart.liveRows = tail.length;
    state.chart.fields = fields.slice();
    const empty = !fields.length ? (state.available.length ? "Choose a field" : "No numeric field yet")
      : !points.length ? "No data in this range" : "";
    chart.render({ fields, colors: colored(fields), x, ys, window: [from / 1000, now / 1000],
                   utc: state.utc, fmtTime: (ms) => fmtTime(ms), fmtTicks, emptyText: empty });
    $("chart").dataset.points = String(points.length);
    $("chart").setAttribute("aria-label", "chart of " + (fields.join(", ") || "no field") + ": " +
                            points.length + " points");
    $("chart-note").textContent = state.chart.error ? state.chart.error :
      state.agg + " per " + bucket + (stored ? " from the stored rows (" + (history.source || "rows") +
      "), the latest bucket from the rows seen live" : " of the rows seen live (not stored)") +
      " · times " + zoneName() + " · drag to zoom, double-click to reset";
    if (stored && now - historyAt > Math.max(HISTORY_REFRESH_MS, 0) &&
        Math.floor(now / bucketMs) * bucketMs !== history.to) loadHistory(gen);
  }

  function renderStats() {
    const now = Date.now();
    const recent = kept.filter((k) => k.live && k.at !== null && now - k.at <= RATE_WINDOW_MS).length;
    const since = now - subscribedAt;
    const span = state.live ? Math.min(RATE_WINDOW_MS, Math.max(1000, since)) : null;
    state.stats.rate = span ? recent / (span / 1000) : null;
    const times = kept.map((k) => k.t).filter(Number.isFinite);
    state.stats.newest = times.length ? Math.max(...times) : null;
    $("stat-rate").textContent = state.stats.rate === null ? "–" : state.stats.rate.toFixed(state.stats.rate < 10 ? 2 : 0);
    $("stat-rate-sub").textContent = !state.live ? "not live" : recent + " live row" +
      (recent === 1 ? "" : "s") + " in the last " + (since >= RATE_WINDOW_MS ? "minute" : fmtAge(since));
    $("stat-age").textContent = state.stats.newest === null ? "–" : fmtAge(now - state.stats.newest);
    $("stat-age-sub").textContent = state.stats.newest === null ? "no row yet"
      : "row time " + fmtTime(state.stats.newest);
  }
  DP.u.renderStats = renderStats;

  let ticks = 0;
  setInterval(() => {  // ages, the rate and the chart's range move with the clock
    if (!state.selected) return;
    renderStats();
    DP.panels.tick();
    ticks += 1;
    if (ticks % 5 === 0) renderChart();
  }, 1000);

  loadPipelines();
})();

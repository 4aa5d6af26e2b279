// The console's operations panels for the selected pipeline: dead letters (and their redrive),
// sinks, consumer lag, and the replay dry run. The page's session only reads; a redrive and a
// replay are changes, so each asks for a token, sends it once and forgets it.
"use strict";
(function () {
  const DP = window.DP = window.DP || {};
  const SHOWN_DEAD = 100;
  const RECENT_ERROR_MS = 5 * 60 * 1000;  // a sink error this recent makes the sink "failing"
  const FROM_CHOICES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 604800 };
  let u = null;  // console.js's helpers, set by then
  let lastMapping = null;  // the mapping text the replay form was filled with

  function parts() { u = DP.u; return u; }

  async function post(path, token, body) {
    return fetch(path, { method: "POST", credentials: "omit",
                         headers: { Authorization: "Bearer " + token,
                                    "Content-Type": "application/json", Accept: "application/json" },
                         body: JSON.stringify(body) });
  }

  function takeToken(id) {
    const input = u.$(id);
    const token = input.value.trim();
    input.value = "";  // used for this one request, then forgotten
    return token;
  }

  function reset(p) {
    parts();
    u.$("dead-letters").tBodies[0].replaceChildren();
    u.$("dead-more").textContent = "";
    u.$("redrive-result").replaceChildren();
    u.$("replay-result").replaceChildren();
    u.$("lag").tBodies[0].replaceChildren();
    lastMapping = JSON.stringify(p.data_mapping || {}, null, 2);
    u.$("replay-mapping").value = lastMapping;
    render(p);
  }

  async function refresh(p, mine) {
    parts();
    const id = p.id;
    const [view, dead, lag] = await Promise.allSettled([
      u.get(u.pipelinePath(id, "")), u.get(u.pipelinePath(id, "/dead-letters?limit=" + SHOWN_DEAD)),
      u.get(u.pipelinePath(id, "/lag"))]);
    if (mine !== u.mine()) return;
    if (view.status === "fulfilled" && view.value.ok) {
      const fresh = await view.value.json();
      const i = u.state.pipelines.findIndex((x) => x.id === id);
      if (i >= 0 && mine === u.mine()) u.state.pipelines[i] = fresh;
    }
    if (dead.status === "fulfilled") {
      const r = dead.value;
      u.state.deadLetters = r.ok ? await r.json() : { error: await u.errorText(r) };
    }
    if (lag.status === "fulfilled") {
      const r = lag.value;
      u.state.lag = r.ok ? await r.json() : { error: await u.errorText(r) };
    }
    if (mine !== u.mine()) return;
    const q = u.current();
    if (q) render(q);
  }

  function render(p) {
    parts();
    renderDead(p);
    renderSinks(p);
    renderLag();
  }

  function tick() {
    const p = parts().current();
    if (p) renderSinks(p);  // "last attempt 4 s ago" moves on
  }

  // ---------- dead letters ----------
  function renderDead(p) {
    const dl = u.state.deadLetters;
    const fromList = Object.values(p.dead_letters || {}).reduce((a, b) => a + b, 0);
    const total = dl && !dl.error ? dl.total : fromList;
    u.$("stat-dead").textContent = String(total);
    u.$("stat-dead").classList.toggle("bad", total > 0);
    const by = dl && !dl.error ? dl.by_stage : (p.dead_letters || {});
    u.$("stat-dead-sub").textContent = total ? Object.entries(by).map(([s, n]) => s + " " + n).join(" · ")
      : "none unresolved";
    u.$("dead-count").textContent = String(total);
    u.$("dead-count").classList.toggle("bad", total > 0);
    const body = u.$("dead-letters").tBodies[0];
    if (!dl) { u.$("dead-empty").textContent = "Loading…"; u.$("dead-empty").hidden = false; return; }
    if (dl.error) {
      body.replaceChildren();
      u.$("dead-empty").textContent = "Could not read the dead letters: " + dl.error;
      u.$("dead-empty").hidden = false;
      return;
    }
    body.replaceChildren(...dl.dead_letters.map((d) => {
      const lin = d.lineage ? [d.lineage.raw_partition, d.lineage.raw_offset, d.lineage.row_index].join(":") : "–";
      const stage = d.sink_index === null || d.sink_index === undefined ? d.stage : d.stage + " #" + d.sink_index;
      const reason = String(d.reason === null || d.reason === undefined ? "–" : d.reason);
      const failed = d.failed_at ? Date.parse(d.failed_at) : NaN;
      return u.el("tr", { dataset: { position: d.position } },
        u.el("td", { class: "nowrap" }, u.el("div", { class: "mono" }, d.position),
             u.el("div", { class: "pid", title: "raw partition:offset:row" }, "raw " + lin)),
        u.el("td", {}, u.el("span", { class: "tag" }, stage)),
        u.el("td", { class: "nowrap", title: Number.isFinite(failed) ? u.fmtTime(failed) : null },
             u.el("div", {}, u.fmtTime(failed, false)), u.el("div", { class: "pid" },
             Number.isFinite(failed) ? u.fmtTime(failed).slice(0, 10) : "")),
        u.el("td", { class: "reason" }, reason));
    }));
    u.$("dead-empty").textContent = "No unresolved dead letters.";
    u.$("dead-empty").hidden = dl.total > 0;
    u.$("dead-more").textContent = dl.total > dl.dead_letters.length
      ? "The oldest " + dl.dead_letters.length + " of " + dl.total + " are shown." : "";
    u.$("redrive-run").disabled = dl.total === 0;
  }

  function setup() {
    parts();
    u.$("redrive").addEventListener("submit", async (event) => {
      event.preventDefault();
      const p = u.current();
      const token = takeToken("redrive-token");
      if (!p || !token) return;
      const mine = u.mine();
      const stage = u.$("redrive-stage").value;
      const out = u.$("redrive-result");
      out.replaceChildren(u.el("p", { class: "muted" }, "Redriving…"));
      u.$("redrive-run").disabled = true;
      let r;
      try { r = await post(u.pipelinePath(p.id, "/dead-letters/redrive"), token, stage ? { stage } : {}); }
      catch (e) { out.replaceChildren(u.el("p", { class: "alert" }, "Cannot reach the server.")); return; }
      finally { u.$("redrive-run").disabled = false; }
      if (mine !== u.mine()) return;
      if (!r.ok) {
        out.replaceChildren(u.el("p", { class: "alert" }, "Redrive refused: " + await u.errorText(r)));
        return;
      }
      const report = u.state.redrive = await r.json();
      out.replaceChildren(
        u.el("p", { class: report.still_failing ? "alert" : "ok" },
             report.total ? "Redriven " + report.redriven + " of " + report.total + "; " +
               report.still_failing + " still fail" + (report.still_failing === 1 ? "s" : "") + "."
               : "Nothing to redrive."),
        ...(report.outcomes.length ? [u.el("ul", { class: "outcomes" }, ...report.outcomes.slice(0, 20).map(
          (o) => u.el("li", {}, u.el("span", { class: "mono" }, o.position), " ", o.stage, ": ", o.outcome)))] : []));
      await refresh(p, mine);
    });

    u.$("replay").addEventListener("submit", async (event) => {
      event.preventDefault();
      const p = u.current();
      const token = takeToken("replay-token");
      if (!p || !token) return;
      const mine = u.mine();
      const out = u.$("replay-result");
      const choice = u.$("replay-from").value;
      const body = { dry_run: true,
                     from: choice === "start" ? 0 : new Date(Date.now() - FROM_CHOICES[choice] * 1000).toISOString() };
      const text = u.$("replay-mapping").value.trim();
      if (text && text !== lastMapping.trim()) {
        try { body.mapping = JSON.parse(text); }
        catch (e) { out.replaceChildren(u.el("p", { class: "alert" }, "The candidate mapping is not JSON: " + e.message)); return; }
      }
      out.replaceChildren(u.el("p", { class: "muted" }, "Running the dry run…"));
      u.$("replay-run").disabled = true;
      let r;
      try { r = await post(u.pipelinePath(p.id, "/replay"), token, body); }
      catch (e) { out.replaceChildren(u.el("p", { class: "alert" }, "Cannot reach the server.")); return; }
      finally { u.$("replay-run").disabled = false; }
      if (mine !== u.mine()) return;
      if (!r.ok) {
        out.replaceChildren(u.el("p", { class: "alert" }, "Dry run refused: " + await u.errorText(r)));
        return;
      }
      u.state.replay = await r.json();
      renderDiff(u.state.replay, !!body.mapping);
    });
  }

  // ---------- replay dry run ----------
  function cell(v) {
    if (v === undefined) return u.el("td", { class: "null" }, "(absent)");
    if (v === null) return u.el("td", { class: "null" }, "null");
    // JSON, so that a type change shows: 40 and "40.0" differ
    return u.el("td", { class: "mono" }, JSON.stringify(v));
  }

  function renderDiff(result, candidate) {
    const d = result.diff || {};
    const chip = (label, n, kind) => u.el("div", { class: "chip " + (n ? kind : ""), dataset: { diff: label } },
      u.el("span", { class: "chip-n" }, String(n)), u.el("span", { class: "chip-l" }, label));
    const samples = [];
    for (const [field, list] of Object.entries(d.samples || {})) {
      for (const s of list) samples.push(u.el("tr", {}, u.el("td", { class: "mono" }, s.lineage.join(":")),
                                               u.el("td", {}, field), cell(s.old), cell(s.new)));
    }
    const changed = Object.entries(d.changed_fields || {});
    u.$("replay-result").replaceChildren(...[
      u.el("p", { class: "muted" }, "Raw partition " + result.raw_partition + ", offsets " + result.from_offset +
           "–" + result.to_offset + ": " + result.records + " record(s) mapped with " +
           (candidate ? "the candidate mapping" : "the current mapping") + "; nothing was written."),
      u.el("div", { class: "chips" }, chip("rows before", d.rows_before || 0, ""),
           chip("rows after", d.rows_after || 0, ""), chip("added", d.added || 0, "good"),
           chip("removed", d.removed || 0, "bad"), chip("changed", d.changed || 0, "warn"),
           chip("unchanged", d.unchanged || 0, ""), chip("dead letters", d.dead_letters || 0, "bad")),
      changed.length ? u.el("p", {}, "Changed fields: ", ...changed.map(([f, n]) =>
        u.el("span", { class: "tag" }, f + " ×" + n))) : null,
      samples.length ? u.el("div", { class: "scroll" }, u.el("table", { class: "compact", id: "replay-samples" },
        u.el("thead", {}, u.el("tr", {}, ...["lineage", "field", "now", "after the replay"].map(
          (h) => u.el("th", { scope: "col" }, h)))),
        u.el("tbody", {}, ...samples.slice(0, 30)))) : null,
      !changed.length && !d.added && !d.removed ? u.el("p", { class: "ok" }, "No row would change.") : null,
    ].filter(Boolean));
  }

  // ---------- sinks ----------
  function sinkHealth(s) {
    const st = s.status || {};
    if (s.enabled === false) return ["disabled", "bad"];
    if (st.retrying > 0) return ["retrying", "warn"];
    if (st.last_error_at && Date.now() - Date.parse(st.last_error_at) < RECENT_ERROR_MS &&
        (!st.last_attempt_at || Date.parse(st.last_attempt_at) - Date.parse(st.last_error_at) < 2000)) {
      return ["failing", "bad"];
    }
    if (!st.delivered && !st.dead) return ["idle", "muted"];
    return ["ok", "good"];
  }

  function sinkTarget(s) {
    const c = s.sink_config || {};
    const url = c.url || c.endpoint || "";
    try { const x = new URL(url); return x.host + x.pathname; } catch (e) { return url || s.sink_type; }
  }

  function renderSinks(p) {
    parts();
    const sinks = p.sinks || [];
    const health = sinks.map(sinkHealth);
    const ok = health.filter(([h]) => h === "ok" || h === "idle").length;
    u.$("stat-sinks").textContent = sinks.length ? ok + " / " + sinks.length : "–";
    u.$("stat-sinks").classList.toggle("bad", sinks.length > 0 && ok < sinks.length);
    u.$("stat-sinks-sub").textContent = sinks.length
      ? (ok === sinks.length ? "healthy" : health.filter(([h]) => h !== "ok" && h !== "idle").map(([h]) => h).join(", "))
      : "no sinks";
    const now = Date.now();
    u.$("sinks").tBodies[0].replaceChildren(...sinks.map((s, i) => {
      const st = s.status || {};
      const [label, kind] = health[i];
      const attempt = st.last_attempt_at ? Date.parse(st.last_attempt_at) : NaN;
      return u.el("tr", { dataset: { sink: String(i), health: label } },
        u.el("td", { class: "mono" }, String(i)),
        u.el("td", {}, u.el("div", {}, s.sink_type), u.el("div", { class: "pid nowrap" }, sinkTarget(s)),
             s.enabled === false ? u.el("div", { class: "sink-error" }, "disabled: " + (s.disabled_reason || ""))
               : st.last_error ? u.el("div", { class: "sink-error", title: st.last_error_at || "" },
                                      "last error: " + st.last_error) : null),
        u.el("td", {}, u.el("span", { class: "pill " + kind }, label)),
        u.el("td", { class: "num" }, String(st.delivered || 0)),
        u.el("td", { class: "num" + (st.retrying ? " warn-text" : "") }, String(st.retrying || 0)),
        u.el("td", { class: "num" + (st.dead ? " bad-text" : "") }, String(st.dead || 0)),
        u.el("td", { class: "nowrap", title: Number.isFinite(attempt) ? u.fmtTime(attempt) : null },
             Number.isFinite(attempt) ? u.fmtAge(now - attempt) + " ago" : "never"));
    }));
    u.$("sinks-empty").hidden = sinks.length > 0;
  }

  // ---------- consumer lag ----------
  function renderLag() {
    const lag = u.state.lag;
    const body = u.$("lag").tBodies[0];
    if (!lag || lag.error) {
      body.replaceChildren();
      u.$("stat-lag").textContent = "–";
      u.$("stat-lag-sub").textContent = lag ? "unavailable" : "loading…";
      u.$("lag-empty").textContent = lag ? "Could not read the lag: " + lag.error : "Loading…";
      u.$("lag-empty").hidden = false;
      return;
    }
    const total = lag.groups.reduce((a, g) => a + g.lag, 0);
    u.$("stat-lag").textContent = String(total);
    u.$("stat-lag").classList.toggle("warn-text", total > 0);
    u.$("stat-lag-sub").textContent = lag.groups.length
      ? lag.groups.map((g) => g.role + " " + g.lag).join(" · ") : "no consumer group yet";
    body.replaceChildren(...lag.groups.map((g) => u.el("tr", { dataset: { role: g.role } },
      u.el("td", {}, u.el("div", {}, g.role), u.el("div", { class: "pid" }, g.group)),
      u.el("td", {}, g.state + " · " + g.members + " member" + (g.members === 1 ? "" : "s")),
      u.el("td", { class: "mono" }, g.partitions.map((x) => x.topic.split(".").pop() + "[" + x.partition +
        "] " + (x.committed === null ? "–" : x.committed) + "/" + x.end).join(", ")),
      u.el("td", { class: "num" + (g.lag ? " warn-text" : "") }, String(g.lag)))));
    u.$("lag-empty").textContent = "No consumer group has committed on this pipeline's partitions yet.";
    u.$("lag-empty").hidden = lag.groups.length > 0;
  }

  DP.panels = { reset, refresh, render, renderSinks, tick };
  document.addEventListener("DOMContentLoaded", setup);
})();

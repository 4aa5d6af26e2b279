// The console's helpers: DOM building, API reads, and times shown in the zone the page is
// set to (local or UTC, `window.dashpipe.utc`). console.js and panels.js use them.
"use strict";
(function () {
  const DP = window.DP = window.DP || {};
  const $ = (id) => document.getElementById(id);
  const utc = () => !!(window.dashpipe && window.dashpipe.utc);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }
  function notice(text) { $("notice").textContent = text || ""; $("notice").hidden = !text; }
  function pipelinePath(id, tail) { return "/api/pipelines/" + encodeURIComponent(id) + tail; }
  function get(path) {
    return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  }
  async function errorText(r) {
    try { return (await r.json()).error || ("HTTP " + r.status); } catch (e) { return "HTTP " + r.status; }
  }
  const formatters = {};
  function formatter(kind) {
    const key = kind + (utc() ? "-utc" : "-local");
    if (!formatters[key]) {
      const zone = utc() ? { timeZone: "UTC" } : {};
      formatters[key] = kind === "zone"
        ? new Intl.DateTimeFormat("en-GB", { ...zone, timeZoneName: "short" })
        : new Intl.DateTimeFormat("en-CA", { ...zone, year: "numeric", month: "2-digit",
            day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
            hourCycle: "h23" });
    }
    return formatters[key];
  }
  function timeParts(ms) {
    return Object.fromEntries(formatter("full").formatToParts(new Date(ms))
      .map((x) => [x.type, x.value]));
  }
  // "2026-12-03 05:35:46" in the chosen zone (`date` false: the time only)
  function fmtTime(ms, date = true) {
    if (!Number.isFinite(ms)) return "–";
    const p = timeParts(ms);
    const time = p.hour + ":" + p.minute + ":" + p.second;
    return date ? p.year + "-" + p.month + "-" + p.day + " " + time : time;
  }
  // the time axis: 24-hour times, seconds only for ticks closer than a minute, and the date
  // under the first tick and under each tick on a new day
  function fmtTicks(splits, incr) {
    let day = null;
    return splits.map((s) => {
      const p = timeParts(s * 1000);
      const date = p.month + "-" + p.day;
      const time = incr >= 86400 ? date : p.hour + ":" + p.minute + (incr < 60 ? ":" + p.second : "");
      const label = incr < 86400 && date !== day ? time + "\n" + date : time;
      day = date;
      return label;
    });
  }
  function zoneName() {
    if (utc()) return "UTC";
    const part = formatter("zone").formatToParts(new Date()).find((x) => x.type === "timeZoneName");
    return part ? part.value : "local";
  }
  function fmtAge(ms) {
    if (!Number.isFinite(ms)) return "–";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  DP.h = { $, el, notice, pipelinePath, get, errorText, fmtTime, fmtTicks, zoneName, fmtAge };
})();

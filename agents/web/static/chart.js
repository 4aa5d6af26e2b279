// The console's chart: uPlot (vendored under /static/vendor/) over time buckets, plus the
// bucketing of live rows, done the way the data API buckets stored rows so both line up.
"use strict";
(function () {
  const DP = window.DP = window.DP || {};
  const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83",
                  "#bc4c00", "#57606a"];
  DP.COLORS = COLORS;

  DP.fmtValue = function (v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e7 || a < 1e-3)) return v.toExponential(2);
    return String(+v.toFixed(a >= 100 ? 1 : 4));
  };

  // The data API aligns buckets to 2000-01-03T00:00Z; for a bucket that divides a day that
  // is the same as aligning to the epoch.
  function bucketStart(ms, bucketMs) { return Math.floor(ms / bucketMs) * bucketMs; }

  function newAcc() {
    return { count: 0, num: 0, sum: 0, min: Infinity, max: -Infinity, last: null, lastT: -Infinity };
  }
  function valueOf(acc, agg) {
    if (agg === "count") return acc ? acc.count : 0;
    if (!acc) return null;
    if (agg === "last") return typeof acc.last === "number" ? acc.last : null;
    if (!acc.num) return null;
    return agg === "avg" ? acc.sum / acc.num : agg === "min" ? acc.min : acc.max;
  }

  // rows: [{t: epoch ms, fields: {...}}] -> [{t: bucket start ms, values: [per field]}]; as the
  // data API: count counts non-null values, avg/min/max read numbers, last is the latest value.
  DP.aggregate = function (rows, fields, bucketMs, agg) {
    const buckets = new Map();
    for (const r of rows) {
      const b = bucketStart(r.t, bucketMs);
      let accs = buckets.get(b);
      if (!accs) { accs = {}; buckets.set(b, accs); }
      for (const f of fields) {
        const v = (r.fields || {})[f];
        if (v === null || v === undefined) continue;
        const a = accs[f] || (accs[f] = newAcc());
        a.count += 1;
        if (r.t >= a.lastT) { a.last = v; a.lastT = r.t; }
        if (typeof v === "number" && Number.isFinite(v)) {
          a.num += 1; a.sum += v;
          if (v < a.min) a.min = v;
          if (v > a.max) a.max = v;
        }
      }
    }
    return [...buckets.entries()].sort((x, y) => x[0] - y[0])
      .map(([t, accs]) => ({ t, values: fields.map((f) => valueOf(accs[f], agg)) }));
  };

  // A uPlot chart in `host`; `render()` replaces its data, and rebuilds it when the fields
  // or the time zone changed (uPlot fixes both at creation).
  class Chart {
    constructor(host, onZoom) {
      this.host = host;
      this.onZoom = onZoom;  // called with [from, to] in seconds, or null when reset
      this.plot = null;
      this.key = null;
      this.zoom = null;
      this.window = null;
      this.empty = host.appendChild(document.createElement("div"));
      this.empty.className = "chart-empty";
      new ResizeObserver(() => this.resize()).observe(host);
    }

    size() {
      return { width: Math.max(300, this.host.clientWidth), height: 300 };
    }

    resize() {
      if (this.plot) this.plot.setSize(this.size());
    }

    build(fields, colors, utc, fmtTime, fmtTicks) {
      if (this.plot) this.plot.destroy();
      const opts = {
        ...this.size(),
        tzDate: utc ? (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC") : (ts) => new Date(ts * 1e3),
        cursor: {
          drag: { x: true, y: false, setScale: false },  // the selection zooms, below
          bind: { dblclick: () => null },  // double-click resets to the range, not to the data
          points: { size: 7 },
        },
        scales: { x: { time: true }, y: { auto: true } },
        legend: { live: true },
        series: [
          { label: "time", value: (u, v) => (v === null || v === undefined ? "–" : fmtTime(v * 1e3)) },
          ...fields.map((f, i) => ({
            label: f, stroke: COLORS[colors[i] % COLORS.length], width: 2, spanGaps: false,
            points: { show: (u) => u.data[0].length < 80, size: 5 },
            value: (u, v) => DP.fmtValue(v),
          })),
        ],
        axes: [
          { stroke: "#57606a", grid: { stroke: "#eaeef2", width: 1 }, ticks: { stroke: "#d0d7de" },
            size: 44, values: (u, splits, i, space, incr) => fmtTicks(splits, incr) },
          { stroke: "#57606a", grid: { stroke: "#eaeef2", width: 1 }, ticks: { stroke: "#d0d7de" },
            size: 64, values: (u, vals) => vals.map(DP.fmtValue) },
        ],
        hooks: {
          setSelect: [(u) => {
            if (u.select.width < 5) return;
            const from = u.posToVal(u.select.left, "x");
            const to = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            this.setZoom([from, to]);
          }],
        },
      };
      const data = [[], ...fields.map(() => [])];
      this.plot = new uPlot(opts, data, this.host);
      this.plot.over.addEventListener("dblclick", () => this.setZoom(null));
      this.host.appendChild(this.empty);  // above the plot
    }

    setZoom(zoom) {
      this.zoom = zoom;
      this.applyScale();
      this.onZoom(zoom);
    }

    applyScale() {
      const [min, max] = this.zoom || this.window || [null, null];
      if (this.plot && min !== null) this.plot.setScale("x", { min, max });
    }

    // fields: names; x: bucket starts (s); ys: one array per field; window: [from, to] (s)
    // colors: per field, its index in COLORS
    render({ fields, colors, x, ys, window: win, utc, fmtTime, fmtTicks, emptyText }) {
      const key = fields.join("\n") + "|" + colors.join(",") + "|" + (utc ? "utc" : "local");
      if (key !== this.key || !this.plot) {
        this.key = key;
        this.build(fields, colors, utc, fmtTime, fmtTicks);
      }
      this.window = win;
      this.plot.setData([x, ...ys]);  // y follows the data; x is the range (or the zoom):
      this.applyScale();
      this.empty.textContent = emptyText || "";
      this.empty.hidden = !emptyText;
    }
  }
  DP.Chart = Chart;
})();

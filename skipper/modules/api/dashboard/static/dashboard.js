// Skipper dashboard: confirmations, auto-submitting filters, and the live task page (SSE + uPlot).
(function () {
  "use strict";

  // Forms that change what is served ask first, with the browser's own confirm().
  document.addEventListener("submit", function (e) {
    var form = e.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
  }, true);
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  var live = document.getElementById("live");
  if (!live) return;

  var TERMINAL = { "task.succeeded": "succeeded", "task.failed": "failed", "task.cancelled": "cancelled" };
  var STATUS = { "task.queued": "queued", "task.started": "running", "task.retried": "running" };
  var PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];
  var seen = {};
  var total = parseInt(live.dataset.epochs, 10) || 0;
  var status = live.dataset.status;
  var finished = ["succeeded", "failed", "cancelled"].indexOf(status) >= 0;
  var installed = false;
  var epochs = [], loss = [], valLoss = [], others = {};
  var lossPlot = null, metricsPlot = null, metricNames = null;
  window.skipperDraws = [];  // the number of epochs drawn at each redraw (the browser test reads it)

  function $(id) { return document.getElementById(id); }
  function fmt(v) {
    if (v === null || v === undefined) return "\u2013";
    if (typeof v !== "number") return String(v);
    return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1000 ? v.toFixed(1) : Number(v.toPrecision(4)).toString());
  }

  function setStatus(s) {
    status = s;
    var badge = $("status");
    badge.textContent = s;
    badge.className = "badge big status-" + s;
  }

  function setProgress(epoch, of) {
    if (of) total = of;
    var pct = total ? Math.min(100, 100 * epoch / total) : 0;
    $("bar-fill").style.width = pct.toFixed(1) + "%";
    $("bar").setAttribute("aria-valuenow", String(epoch));
    $("epochs").textContent = epoch + "/" + total;
  }

  function size(el) { return { width: Math.max(280, el.clientWidth), height: 260 }; }

  function makePlot(el, names, colors) {
    el.innerHTML = "";
    var series = [{ label: "epoch" }];
    names.forEach(function (n, i) {
      series.push({ label: n, stroke: colors[i % colors.length], width: 2, points: { show: true, size: 5 },
                    value: function (u, v) { return fmt(v); } });
    });
    var s = size(el);
    return new uPlot({
      width: s.width, height: s.height, series: series, legend: { live: true },
      scales: { x: { time: false } },
      axes: [{ label: "epoch", grid: { stroke: "#eef1f5" }, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
             { grid: { stroke: "#eef1f5" }, size: 60 }],
    }, [[]].concat(names.map(function () { return []; })), el);
  }

  function draw() {
    var lossEl = $("loss-chart");
    if (!lossPlot) lossPlot = makePlot(lossEl, ["loss", "val_loss"], ["#2563eb", "#f97316"]);
    lossPlot.setData([epochs.slice(), loss.slice(), valLoss.slice()]);
    lossEl.dataset.points = String(epochs.length);
    window.skipperDraws.push(epochs.length);
    if (metricNames && metricNames.length) {
      var mEl = $("metrics-chart");
      if (!metricsPlot) metricsPlot = makePlot(mEl, metricNames, PALETTE.slice(2));
      metricsPlot.setData([epochs.slice()].concat(metricNames.map(function (n) { return others[n].slice(); })));
    }
  }

  function onProgress(f) {
    var epoch = f.epoch, m = f.metrics || {};
    if (epochs.length && epoch <= epochs[epochs.length - 1]) {  // a new attempt starts over
      epochs = []; loss = []; valLoss = []; others = {};
      if (metricNames) metricNames.forEach(function (n) { others[n] = []; });
    }
    if (metricNames === null) {
      metricNames = Object.keys(m).filter(function (k) { return k !== "val_loss"; }).sort();
      metricNames.forEach(function (n) { others[n] = []; });
    }
    epochs.push(epoch);
    loss.push(f.loss === undefined ? null : f.loss);
    valLoss.push(m.val_loss === undefined ? null : m.val_loss);
    metricNames.forEach(function (n) { others[n].push(m[n] === undefined ? null : m[n]); });
    setProgress(epoch, f.epochs);
    $("last-loss").textContent = fmt(f.loss);
    $("last-val-loss").textContent = fmt(m.val_loss);
    if (status === "queued") { setStatus("running"); refreshSummary(); }
    draw();
  }

  function logEvent(e) {
    var row = document.createElement("tr");
    row.className = "kind-" + e.kind.replace(/\./g, "-");
    [e.id, (e.at || "").replace("T", " ").slice(11, 23), e.kind, e.source, describe(e)].forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = v;
      row.appendChild(td);
    });
    $("event-log").appendChild(row);
  }

  // An event's fields in a line: numbers shortened, the progress's metrics flattened.
  function describe(e) {
    var f = Object.assign({}, e.fields || {}), parts = [];
    if (e.kind === "task.progress") {
      parts.push("epoch " + f.epoch + "/" + f.epochs, "loss " + fmt(f.loss));
      Object.keys(f.metrics || {}).sort().forEach(function (k) { parts.push(k + " " + fmt(f.metrics[k])); });
      return parts.join("  \u00b7  ");
    }
    Object.keys(f).forEach(function (k) {
      var v = f[k];
      if (typeof v === "number") v = fmt(v);
      else if (v && typeof v === "object") v = JSON.stringify(v);
      parts.push(k + "=" + v);
    });
    return parts.join("  ");
  }

  function refreshSummary() {
    if (window.htmx) window.htmx.ajax("GET", live.dataset.summary, { target: "#summary", swap: "innerHTML" });
  }

  var source = new EventSource(live.dataset.stream);
  source.onmessage = function (msg) {
    var e;
    try { e = JSON.parse(msg.data); } catch (err) { return; }
    if (seen[e.id]) return;
    seen[e.id] = true;
    logEvent(e);
    if (e.kind === "task.started" && e.fields && e.fields.attempt !== undefined) $("attempt").textContent = String(e.fields.attempt + 1);
    if (e.kind === "task.progress") onProgress(e.fields || {});
    else if (STATUS[e.kind] && !finished) {
      if (status !== STATUS[e.kind]) refreshSummary();
      setStatus(STATUS[e.kind]);
    }
    else if (TERMINAL[e.kind]) {
      finished = true;
      setStatus(TERMINAL[e.kind]);
      if (e.kind === "task.succeeded") setProgress(epochs.length ? epochs[epochs.length - 1] : total, 0);
      refreshSummary();
    } else if (e.kind === "model.installed" || e.kind === "model.rejected") {
      installed = true;
    }
    if (finished && (installed || status !== "succeeded")) source.close();
  };
  source.onerror = function () {
    // The server ends a finished task's stream; EventSource would reconnect (with Last-Event-ID) forever.
    if (finished) source.close();
  };
  window.addEventListener("resize", function () {
    [[lossPlot, "loss-chart"], [metricsPlot, "metrics-chart"]].forEach(function (p) {
      if (p[0]) p[0].setSize(size($(p[1])));
    });
  });
})();

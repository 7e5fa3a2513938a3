// The pypes console's one script (served by pypes; the CSP allows no other).
// It draws the charts with uPlot (vendored, see vendor/uPlot.LICENSE),
// keeps the overview's charts live, and checks an erasure certificate's
// signature in the browser. Every page works without it: the figures and
// tables are in the HTML.
"use strict";

(function () {
  const charts = [];

  function width(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width) || 600);
  }

  function makeChart(el, labels, data, opts) {
    const series = [{ label: "time" }].concat(labels.map(function (l, i) {
      const s = { label: l.label, stroke: l.stroke || ["#0a5bb5", "#a40e26", "#116329", "#7d4e00", "#6639ba", "#1b7c83", "#57606a"][i % 7], width: 2, spanGaps: false };
      if (l.points) { s.stroke = l.stroke; s.paths = function () { return null; }; s.points = { show: true, size: 8, fill: l.stroke }; }
      return s;
    }));
    const plot = new uPlot({
      width: width(el),
      height: 200,
      series: series,
      scales: { x: { time: true } },
      axes: [{}, { size: 60 }],
      legend: { live: true },
    }, data, el);
    el.dataset.points = String(data[0].length);
    charts.push({ el: el, plot: plot });
    return plot;
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (c) { c.plot.setSize({ width: width(c.el), height: 200 }); });
  });

  // ---- Overview: the node's last hour, refreshed every sample.
  function overview(root) {
    const src = root.dataset.src;
    const plots = {};
    function seriesOf(d, name) {
      if (name === "methods_rate" || name === "methods_p99") {
        const key = name === "methods_rate" ? "rate" : "p99_ms";
        const names = Object.keys(d.methods);
        return { labels: names.map(function (n) { return { label: n }; }), data: names.map(function (n) { return d.methods[n][key]; }) };
      }
      if (name === "lag") {
        const names = Object.keys(d.lag);
        return { labels: names.map(function (n) { return { label: n }; }), data: names.map(function (n) { return d.lag[n]; }) };
      }
      const titles = { request_rate: "requests/s", p99_ms: "p99 ms", fsync_p99_ms: "fsync p99 ms", live_actors: "live actors", log_head: "head position", log_bytes: "bytes", ready: "ready (1/0)" };
      return { labels: [{ label: titles[name] || name }], data: [d[name]] };
    }
    function draw(d) {
      root.querySelectorAll(".chart[data-series]").forEach(function (el) {
        const name = el.dataset.series;
        const s = seriesOf(d, name);
        const data = [d.t].concat(s.data);
        const key = name + ":" + s.labels.map(function (l) { return l.label; }).join(",");
        if (plots[name] && plots[name].key === key) {
          plots[name].plot.setData(data);
          el.dataset.points = String(d.t.length);
        } else {
          if (plots[name]) { plots[name].plot.destroy(); el.textContent = ""; }
          plots[name] = { key: key, plot: makeChart(el, s.labels, data) };
        }
      });
      root.dataset.samples = String(d.t.length);
      const updated = document.getElementById("updated");
      if (updated && d.t.length) { updated.textContent = new Date(d.t[d.t.length - 1] * 1000).toISOString().replace(".000", ""); }
    }
    function load() {
      fetch(src, { credentials: "same-origin", headers: { "accept": "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status + " " + r.statusText); } return r.json(); })
        .then(function (d) {
          draw(d);
          const err = document.getElementById("live-error");
          if (err) { err.hidden = true; }
          window.setTimeout(load, Math.max(1, d.interval_secs) * 1000);
        })
        .catch(function (e) {
          const err = document.getElementById("live-error");
          if (err) { err.hidden = false; err.textContent = "Live update failed (" + e.message + "); the figures below are from the page load. Reload the page (your session may have ended)."; }
        });
    }
    load();
  }

  // ---- A Pype's analytics: cells from the page, suppressed ones marked.
  function analytics(el) {
    const raw = document.getElementById(el.dataset.source);
    if (!raw) { return; }
    const cells = JSON.parse(raw.textContent);
    const t = cells.map(function (c) { return c.t; });
    const shown = cells.map(function (c) { return c.suppressed ? null : c.sessions; });
    const marks = cells.map(function (c) { return c.suppressed ? 0 : null; });
    makeChart(el, [{ label: "Sessions" }, { label: "suppressed (fewer than k)", points: true, stroke: "#57606a" }], [t, shown, marks]);
    el.dataset.suppressed = String(marks.filter(function (m) { return m !== null; }).length);
  }

  // ---- An erasure certificate: the Ed25519 signature checked here too.
  function hexBytes(h) {
    const out = new Uint8Array(h.length / 2);
    for (let i = 0; i < out.length; i++) { out[i] = parseInt(h.substr(i * 2, 2), 16); }
    return out;
  }
  function certificate(el) {
    const out = document.getElementById("browser-check");
    const text = document.getElementById("certificate-text").textContent;
    const sig = el.dataset.signature, key = el.dataset.publicKey;
    if (!window.crypto || !crypto.subtle) { out.textContent = "This browser cannot check Ed25519 signatures (no WebCrypto)."; return; }
    crypto.subtle.importKey("raw", hexBytes(key), { name: "Ed25519" }, false, ["verify"])
      .then(function (k) { return crypto.subtle.verify({ name: "Ed25519" }, k, hexBytes(sig), new TextEncoder().encode(text)); })
      .then(function (ok) {
        out.textContent = ok ? "Checked in your browser: the Ed25519 signature is valid for this certificate and the erasure public key."
                             : "Checked in your browser: the signature does NOT match this certificate.";
        out.className = ok ? "state-ok" : "state-bad";
        el.dataset.browserCheck = ok ? "valid" : "invalid";
      })
      .catch(function (e) { out.textContent = "Your browser could not check the signature: " + e.message; el.dataset.browserCheck = "error"; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("metrics");
    if (root) { overview(root); }
    document.querySelectorAll(".chart[data-source]").forEach(analytics);
    const cert = document.getElementById("certificate");
    if (cert) { certificate(cert); }
  });
})();

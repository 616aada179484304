/* fedfusion dashboard: keeps the server-rendered pages current from the JSON API.
 *
 * No build step and no third-party code besides Plotly (served from the installed plotly
 * Python package at /vendor/plotly.min.js). Data is inserted with textContent only.
 */
(function () {
  "use strict";

  const refreshMs = (window.FEDFUSION && window.FEDFUSION.refreshMs) || 2000;
  const CURVE_METRICS = ["loss", "auc", "accuracy"];
  const METRIC_TITLES = { loss: "loss", auc: "AUC", accuracy: "accuracy" };
  const PLOT_CONFIG = { displaylogo: false, responsive: true };

  // ------------------------------------------------------------------ helpers

  async function getJSON(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (!response.ok) {
      const error = new Error(url + ": HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(function ([key, value]) {
      if (value === null || value === undefined) return;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "style") node.setAttribute("style", value);
      else node.setAttribute(key, value);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.appendChild(el("tr", { className: "empty" }, [el("td", { colspan: columns, text: emptyText })]));
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  const fmt = {
    auc: function (v) { return v === null || v === undefined ? "–" : Number(v).toFixed(3); },
    num: function (v) { return v === null || v === undefined ? "–" : String(v); },
    eps: function (v) { return Number(v).toFixed(2); },
    when: function (v) { return v ? v.replace("T", " ").slice(0, 19) + " UTC" : "–"; },
    bytes: function (v) {
      if (v === null || v === undefined) return "–";
      const units = ["B", "KB", "MB", "GB"];
      let size = Number(v);
      let i = 0;
      while (size >= 1024 && i < units.length - 1) { size /= 1024; i += 1; }
      return i === 0 ? size + " B" : size.toFixed(1) + " " + units[i];
    },
  };

  function setLive(state, message) {
    const node = document.getElementById("live-indicator");
    if (!node) return;
    node.className = "live " + state;
    node.textContent = state === "error" ? "offline" : state === "idle" ? "up to date" : "live";
    if (message) node.title = message;
  }

  // ------------------------------------------------------------------ runs list

  function runRow(run) {
    const link = "/runs/" + run.id;
    return el("tr", { "data-run-id": run.id }, [
      el("td", {}, [el("a", { href: link, text: String(run.id) })]),
      el("td", {}, [el("a", { href: link, text: run.name || "(unnamed)" })]),
      el("td", { text: run.task }),
      el("td", {}, [run.model].concat(run.backbone ? [" ", el("span", { className: "muted", text: "(" + run.backbone + ")" })] : [])),
      el("td", { text: run.strategy }),
      el("td", {}, [el("span", { className: "badge " + run.status, text: run.status })]),
      el("td", { className: "num", text: run.rounds_done + " / " + run.rounds_planned }),
      el("td", { className: "num", text: fmt.auc(run.best_auc) }),
      el("td", { text: fmt.when(run.started_at) }),
      el("td", { text: fmt.when(run.ended_at) }),
    ]);
  }

  function runsPage() {
    const body = document.getElementById("runs-body");
    async function tick() {
      try {
        const data = await getJSON("/api/runs");
        replaceRows(body, data.runs.map(runRow), "No runs yet.", 10);
        setLive(data.runs.some(function (r) { return r.status === "running"; }) ? "on" : "idle");
      } catch (error) {
        setLive("error", String(error));
      }
      window.setTimeout(tick, refreshMs);
    }
    tick();
  }

  // ------------------------------------------------------------------ run page

  function curveLayout(metric, scope) {
    const bounded = metric !== "loss";
    return {
      title: { text: (scope === "global" ? "global " : "per site: ") + METRIC_TITLES[metric], font: { size: 14 } },
      margin: { l: 48, r: 12, t: 36, b: scope === "sites" ? 78 : 44 },
      height: scope === "sites" ? 290 : 260,
      xaxis: { title: { text: "round" }, tickformat: "d", rangemode: "tozero", zeroline: false },
      yaxis: bounded ? { range: [0, 1.02] } : { rangemode: "tozero" },
      showlegend: scope === "sites",
      legend: { orientation: "h", x: 0, y: -0.32, yanchor: "top" },
      hovermode: "x unified",
    };
  }

  function siteNames(rounds) {
    const names = new Set();
    rounds.forEach(function (r) { Object.keys(r.sites || {}).forEach(function (s) { names.add(s); }); });
    return Array.from(names).sort();
  }

  function value(metrics, key) {
    const v = metrics ? metrics[key] : undefined;
    return typeof v === "number" ? v : null;
  }

  function drawCurves(rounds) {
    const x = rounds.map(function (r) { return r.round; });
    const sites = siteNames(rounds);
    CURVE_METRICS.forEach(function (metric) {
      const globalDiv = document.getElementById("chart-global-" + metric);
      Plotly.react(globalDiv, [{
        x: x,
        y: rounds.map(function (r) { return value(r.global, metric); }),
        name: "global", type: "scatter", mode: "lines+markers",
        line: { color: "#1f2937", width: 3 },
      }], curveLayout(metric, "global"), PLOT_CONFIG);

      const sitesDiv = document.getElementById("chart-sites-" + metric);
      Plotly.react(sitesDiv, sites.map(function (site) {
        return {
          x: x,
          y: rounds.map(function (r) { return value((r.sites || {})[site], metric); }),
          name: site, type: "scatter", mode: "lines+markers", connectgaps: false,
        };
      }), curveLayout(metric, "sites"), PLOT_CONFIG);
    });
  }

  function drawRoc(roc, classes) {
    const div = document.getElementById("chart-roc");
    const traces = roc.curves.map(function (curve) {
      const label = classes[curve.positive] !== undefined ? classes[curve.positive] : "class " + curve.positive;
      return {
        x: curve.fpr, y: curve.tpr, type: "scatter", mode: "lines",
        name: label + " (AUC " + fmt.auc(curve.auc) + ")",
        line: { shape: "linear", width: 2 },
      };
    });
    traces.push({
      x: [0, 1], y: [0, 1], type: "scatter", mode: "lines", name: "chance",
      line: { dash: "dot", color: "#9ca3af", width: 1 }, hoverinfo: "skip",
    });
    Plotly.react(div, traces, {
      margin: { l: 52, r: 12, t: 12, b: 44 },
      height: 340,
      xaxis: { title: { text: "1 − specificity (FPR)" }, range: [0, 1], constrain: "domain" },
      yaxis: { title: { text: "sensitivity (TPR)" }, range: [0, 1], scaleanchor: "x" },
      legend: { x: 0.98, xanchor: "right", y: 0.04, bgcolor: "rgba(255,255,255,0.8)" },
    }, PLOT_CONFIG);
    document.getElementById("roc-round").textContent = "(round " + roc.round + ")";
  }

  function drawConfusion(roc, classes) {
    const holder = document.getElementById("confusion");
    const matrix = roc.confusion;
    if (!Array.isArray(matrix)) return;
    const names = matrix.map(function (_, i) { return classes[i] !== undefined ? classes[i] : String(i); });
    const head = el("tr", {}, [el("th", { className: "corner", text: "true ↓ / predicted →" })].concat(
      names.map(function (n) { return el("th", { text: n }); })));
    const body = matrix.map(function (row, i) {
      const total = row.reduce(function (a, b) { return a + b; }, 0) || 1;
      return el("tr", {}, [el("th", { text: names[i] })].concat(row.map(function (count, j) {
        const share = count / total;
        const tone = i === j ? "34, 139, 84" : "190, 60, 50";
        return el("td", {
          className: "num cell",
          style: "background: rgba(" + tone + ", " + (0.08 + 0.6 * share).toFixed(2) + ")",
          title: (100 * share).toFixed(1) + "% of true " + names[i],
          text: String(count),
        });
      })));
    });
    holder.replaceChildren(el("table", { className: "confusion", id: "confusion-table" }, [
      el("thead", {}, [head]), el("tbody", {}, body),
    ]));
    document.getElementById("confusion-round").textContent = "(round " + roc.round + ")";
  }

  function privacyCell(privacy) {
    if (!privacy) return el("td", { className: "privacy-cell" }, [el("span", { className: "muted", text: "no DP budget reported" })]);
    if (!privacy.budget) {
      return el("td", { className: "privacy-cell" }, [
        "ε " + fmt.eps(privacy.epsilon) + " ", el("span", { className: "muted", text: "(no budget reported)" }),
      ]);
    }
    const width = Math.min(100, 100 * privacy.fraction);
    return el("td", { className: "privacy-cell" }, [
      el("div", {
        className: "privacy-bar " + privacy.level,
        title: "ε " + fmt.eps(privacy.epsilon) + " of " + fmt.eps(privacy.budget),
      }, [el("div", { className: "fill", style: "width: " + width + "%" })]),
      el("span", { className: "privacy-text", text: "ε " + fmt.eps(privacy.epsilon) + " / " + fmt.eps(privacy.budget) }),
    ]);
  }

  function siteRow(site) {
    const seconds = site.last_seconds === null || site.last_seconds === undefined
      ? "–"
      : site.last_seconds.toFixed(1) + " s / " + (site.mean_seconds || 0).toFixed(1) + " s";
    return el("tr", { "data-site": site.site }, [
      el("td", { text: site.site }),
      el("td", { className: "num", text: fmt.num(site.train_examples) }),
      el("td", { className: "num", text: fmt.num(site.eval_examples) }),
      el("td", { className: "num", text: String(site.rounds_ok) }),
      el("td", { className: "num" + (site.failures ? " bad" : ""), title: site.last_error, text: String(site.failures) }),
      el("td", { text: fmt.when(site.last_seen) }),
      el("td", { className: "num", text: seconds }),
      privacyCell(site.privacy),
    ]);
  }

  function checkpointRow(c) {
    return el("tr", {}, [
      el("td", { className: "num", text: String(c.round) }),
      el("td", { text: c.file }),
      el("td", { className: "num", text: fmt.bytes(c.size_bytes) }),
      el("td", {}, [el("code", { title: c.sha256, text: c.sha256.slice(0, 12) + "…" })]),
      el("td", { text: fmt.when(c.created_at) }),
      el("td", {}, [el("a", { href: c.url, download: "", text: "download" })]),
    ]);
  }

  function runPage(runId, classes) {
    const state = { rounds: [], lastRound: 0, status: null, drawnRoc: 0 };
    const base = "/api/runs/" + runId;

    async function refreshDetail() {
      const detail = await getJSON(base);
      const run = detail.run;
      const badge = document.getElementById("run-status");
      badge.className = "badge " + run.status;
      badge.textContent = run.status;
      document.getElementById("run-rounds").textContent = run.rounds_done + " / " + run.rounds_planned;
      document.getElementById("run-best-auc").textContent = fmt.auc(run.best_auc);
      document.getElementById("run-ended").textContent = fmt.when(run.ended_at);
      replaceRows(document.getElementById("sites-body"), detail.sites.map(siteRow), "No site has reported yet.", 8);
      replaceRows(document.getElementById("checkpoints-body"), detail.checkpoints.map(checkpointRow), "No checkpoint saved yet.", 6);
      return run.status;
    }

    async function refreshRoc() {
      if (state.drawnRoc === state.lastRound) return;
      try {
        const roc = await getJSON(base + "/roc");
        drawRoc(roc, classes);
        drawConfusion(roc, classes);
        state.drawnRoc = state.lastRound;
      } catch (error) {
        if (error.status !== 404) throw error;
      }
    }

    async function tick() {
      let status = state.status;
      try {
        const data = await getJSON(base + "/rounds?after=" + state.lastRound);
        if (data.rounds.length) {
          state.rounds = state.rounds.concat(data.rounds);
          state.lastRound = state.rounds[state.rounds.length - 1].round;
          drawCurves(state.rounds);
          await refreshRoc();
        }
        status = await refreshDetail();
        document.body.dataset.roundsShown = String(state.rounds.length);
        setLive(status === "running" ? "on" : "idle");
      } catch (error) {
        setLive("error", String(error));
        status = "running"; // retry
      }
      state.status = status;
      if (status === "running") window.setTimeout(tick, refreshMs);
    }

    drawCurves([]);
    tick();
  }

  window.FedfusionDashboard = { runsPage: runsPage, runPage: runPage };
})();

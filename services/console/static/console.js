// steadfast ops console: plain JavaScript, no dependencies, no inline anything (the
// Content-Security-Policy allows only this file). Every value from the server reaches the
// page through textContent or an attribute, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const CHART_MS = 15000;
  const RETRY_EVERY = 3; // retry table refresh: every third overview poll
  let csrf = null;
  let polls = 0;
  let pollTimer = null;
  let chartTimer = null;
  let lastOverview = null;
  let bulkPending = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleTimeString();
  }

  function detail(body) {
    if (!body) return "";
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    }
    return JSON.stringify(body);
  }

  class HttpError extends Error {
    constructor(status, body) {
      super(`${status}: ${detail(body)}`);
      this.status = status;
      this.body = body;
    }
  }

  async function call(method, path, body, headers) {
    const init = { method, credentials: "same-origin", headers: { ...(headers || {}) } };
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf || "";
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401 && path !== "/api/session") {
      showSignIn("Your session ended; sign in again.");
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }

  // -- session ------------------------------------------------------------------------

  function showSignIn(message) {
    csrf = null;
    stopPolling();
    $("console").hidden = true;
    $("nav").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in-panel").hidden = false;
    $("sign-in-error").textContent = message || "";
    $("token").focus();
  }

  function showConsole() {
    $("sign-in-panel").hidden = true;
    $("console").hidden = false;
    $("nav").hidden = false;
    $("sign-out").hidden = false;
    startPolling();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    try {
      const data = await call("POST", "/api/session", { token: input.value });
      csrf = data.csrf;
      input.value = "";
      $("sign-in-error").textContent = "";
      showConsole();
    } catch (err) {
      $("sign-in-error").textContent =
        err.status === 401 ? "That is not the admin token." : `Sign-in failed: ${err.message}`;
    }
  }

  async function signOut() {
    try {
      await call("DELETE", "/api/session");
    } finally {
      showSignIn("Signed out.");
    }
  }

  // -- polling --------------------------------------------------------------------------

  function startPolling() {
    stopPolling();
    poll();
    charts();
  }

  function stopPolling() {
    clearTimeout(pollTimer);
    clearTimeout(chartTimer);
    pollTimer = chartTimer = null;
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (!csrf) return;
    try {
      const data = await call("GET", "/api/overview");
      lastOverview = data;
      render(data);
      if (polls % RETRY_EVERY === 0) await loadRetries();
      polls += 1;
    } catch (err) {
      $("errors").textContent = `Console: ${err.message}`;
    }
    // A hidden tab polls rarely: the console stays cheap when nobody looks.
    if (csrf) pollTimer = setTimeout(poll, document.hidden ? POLL_MS * 10 : POLL_MS);
  }

  function refreshSoon() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, 150);
  }

  function render(data) {
    $("refreshed").textContent = `updated ${when(data.generated_at)}`;
    const problems = Object.entries(data.errors || {}).map(([k, v]) => `${k}: ${v}`);
    $("errors").textContent = problems.join(" · ");
    renderCounts($("order-counts"), data.orders, "order");
    $("orders-approx").hidden = data.orders_exact !== false;
    renderCounts($("retry-counts"), data.retries, "retry");
    renderBreaker(data);
    renderWarehouse(data);
    renderAlerts(data.alerts);
  }

  function renderCounts(box, counts, kind) {
    clear(box);
    if (!counts) {
      box.append(el("span", { class: "muted" }, "unavailable"));
      return;
    }
    for (const [status, n] of Object.entries(counts)) {
      box.append(
        el(
          "div",
          { class: `count s-${status}`, id: `${kind}-count-${status}`, "data-count": n },
          el("span", { class: "n" }, n.toLocaleString()),
          el("span", { class: "label" }, status),
        ),
      );
    }
  }

  // -- orders ---------------------------------------------------------------------------

  async function placeOrders(event) {
    event.preventDefault();
    const count = Math.max(1, Math.min(200, parseInt($("place-count").value, 10) || 1));
    const body = {
      customer_id: $("place-customer").value,
      items: [{ sku: $("place-sku").value, quantity: parseInt($("place-quantity").value, 10) }],
    };
    const list = $("placed-list");
    $("place-submit").disabled = true;
    let placed = 0;
    let failed = "";
    try {
      for (let i = 0; i < count; i++) {
        try {
          const key = crypto.randomUUID();
          const order = await call("POST", "/api/orders", body, { "Idempotency-Key": key });
          placed += 1;
          const link = el("a", { href: "#orders", "data-order": order.id }, order.id);
          link.addEventListener("click", () => showJourney(order.id));
          list.prepend(el("li", {}, link));
          while (list.children.length > 10) list.lastChild.remove();
        } catch (err) {
          failed = err.message;
          break;
        }
      }
    } finally {
      $("place-submit").disabled = false;
    }
    $("place-result").textContent =
      `placed ${placed} order(s)` + (failed ? `; stopped: ${failed}` : "");
    refreshSoon();
  }

  async function searchOrder(event) {
    event.preventDefault();
    await showJourney($("search-id").value.trim());
  }

  async function showJourney(id) {
    const box = clear($("journey"));
    $("search-id").value = id;
    try {
      const order = await call("GET", `/api/orders/${encodeURIComponent(id)}`);
      box.append(
        el(
          "dl",
          { class: "kv", id: "journey-summary" },
          el("dt", {}, "status"),
          el("dd", { id: "journey-status", class: `s-${order.status}` }, order.status),
          el("dt", {}, "reason"),
          el("dd", {}, order.status_reason || ""),
          el("dt", {}, "attempts"),
          el("dd", {}, order.attempts),
          el("dt", {}, "trace id"),
          el("dd", { class: "mono" }, order.trace_id || "—"),
          el("dt", {}, "items"),
          el("dd", {}, order.items.map((i) => `${i.quantity} × ${i.sku}`).join(", ")),
        ),
      );
      const rows = (order.journey || []).map((step) =>
        el(
          "tr",
          {},
          el("td", {}, when(step.at)),
          el("td", { class: `s-${step.status}` }, step.status),
          el("td", {}, step.attempt ?? ""),
          el("td", {}, (step.details && step.details.error_class) || ""),
          el("td", {}, step.reason || ""),
        ),
      );
      box.append(
        el(
          "table",
          { id: "journey-table" },
          el(
            "thead",
            {},
            el("tr", {}, ["At", "Status", "Attempt", "Error class", "Reason"].map((h) => el("th", {}, h))),
          ),
          el("tbody", {}, rows),
        ),
      );
    } catch (err) {
      box.append(el("p", { class: "error" }, err.status === 404 ? "No such order." : err.message));
    }
  }

  // -- breaker --------------------------------------------------------------------------

  function renderBreaker(data) {
    const body = clear($("breaker-table").tBodies[0]);
    const view = data.breaker_view && data.breaker_view.snapshot;
    for (const b of data.breakers || []) {
      const win = view && view.name === b.name ? view.window : null;
      body.append(
        el(
          "tr",
          { "data-breaker": b.name },
          el("td", {}, b.name),
          el("td", { class: `state b-${b.state}`, id: `breaker-state-${b.name}` }, b.state),
          el("td", {}, b.forced || "—"),
          el("td", {}, when(b.opened_at)),
          el(
            "td",
            {},
            win
              ? `${win.failures}/${win.calls} failed in ${win.seconds}s (${Math.round(win.failure_rate * 100)}%)`
              : "",
          ),
        ),
      );
    }
    if (!(data.breakers || []).length) {
      body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no breaker row yet (created on first use)")));
    }
    const list = clear($("transitions"));
    for (const t of data.transitions || []) {
      list.append(
        el("li", {}, `${when(t.at)} ${t.name}: ${t.from} → ${t.to}`, t.forced ? ` (forced ${t.forced})` : ""),
      );
    }
    if (!(data.transitions || []).length) list.append(el("li", { class: "muted" }, "none yet"));
  }

  async function forceBreaker(force) {
    try {
      await call("POST", "/api/breaker", { force });
      $("errors").textContent = "";
    } catch (err) {
      $("errors").textContent = `Breaker: ${err.message}`;
    }
    refreshSoon();
  }

  // -- warehouse ------------------------------------------------------------------------

  let knobsFilled = false;

  function renderWarehouse(data) {
    const faults = data.faults;
    const active = faults ? faults.active : null;
    $("outage-state").textContent = active ? (active.outage ? "ON" : "off") : "?";
    $("outage-state").className = active && active.outage ? "bad" : "good";
    $("outage-toggle").textContent = active && active.outage ? "Switch outage off" : "Switch outage on";
    $("outage-toggle").dataset.outage = active && active.outage ? "on" : "off";
    if (faults && !knobsFilled) {
      fillKnobs(faults.config);
      knobsFilled = true;
    }
    const act = clear($("faults-active"));
    if (active) {
      kv(act, "failure rate", active.failure_rate);
      kv(act, "status codes", active.status_codes.join(", "));
      kv(act, "terminal rate", active.terminal_rate);
      kv(act, "timeout rate", `${active.timeout_rate} (${active.timeout_delay_seconds}s)`);
      kv(act, "latency", active.latency ? JSON.stringify(active.latency) : "none");
      kv(act, "outage", active.outage ? "ON" : "off");
      const s = faults.scenario;
      kv(
        act,
        "scenario",
        s
          ? s.running
            ? `phase ${s.phase_index + 1}/${s.phase_count}, ${Math.round(s.remaining_seconds)}s left`
            : "finished"
          : "none",
      );
    }
    const stats = clear($("warehouse-stats"));
    const st = data.warehouse_stats;
    if (st) {
      kv(stats, "calls", st.calls.total);
      kv(stats, "reservations", st.reservations);
      kv(stats, "orders reserved", st.orders_reserved);
      kv(stats, "duplicates deflected", st.duplicates_deflected);
      kv(stats, "duplicate reservations", st.duplicate_reservations);
      kv(stats, "out of stock", st.out_of_stock);
      kv(stats, "faults", Object.entries(st.faults).map(([k, v]) => `${k} ${v}`).join(", ") || "none");
    }
  }

  function kv(dl, key, value) {
    dl.append(el("dt", {}, key), el("dd", {}, value));
  }

  function fillKnobs(config) {
    $("f-failure-rate").value = config.failure_rate;
    $("f-status-codes").value = config.status_codes.join(",");
    $("f-retry-after").value = config.retry_after_seconds;
    $("f-terminal-rate").value = config.terminal_rate;
    $("f-timeout-rate").value = config.timeout_rate;
    $("f-timeout-delay").value = config.timeout_delay_seconds;
    $("f-outage").checked = config.outage;
    const lat = config.latency;
    $("f-latency-kind").value = lat ? lat.kind : "";
    $("f-latency-low").value = lat ? (lat.kind === "fixed" ? lat.ms : lat.low_ms) : 0;
    $("f-latency-high").value = lat && lat.kind === "uniform" ? lat.high_ms : 0;
    $("f-scenario").value = config.scenario && config.scenario.length ? JSON.stringify(config.scenario) : "";
  }

  function knobs() {
    const config = {
      failure_rate: parseFloat($("f-failure-rate").value) || 0,
      status_codes: $("f-status-codes").value.split(/[ ,]+/).filter(Boolean).map(Number),
      retry_after_seconds: parseInt($("f-retry-after").value, 10) || 0,
      terminal_rate: parseFloat($("f-terminal-rate").value) || 0,
      timeout_rate: parseFloat($("f-timeout-rate").value) || 0,
      timeout_delay_seconds: parseFloat($("f-timeout-delay").value) || 30,
      outage: $("f-outage").checked,
      latency: null,
      scenario: [],
    };
    const kind = $("f-latency-kind").value;
    const low = parseFloat($("f-latency-low").value) || 0;
    if (kind === "fixed") config.latency = { kind, ms: low };
    if (kind === "uniform") {
      config.latency = { kind, low_ms: low, high_ms: parseFloat($("f-latency-high").value) || low };
    }
    const scenario = $("f-scenario").value.trim();
    if (scenario) config.scenario = JSON.parse(scenario);
    return config;
  }

  async function putFaults(config) {
    const state = await call("PUT", "/api/warehouse/faults", config);
    fillKnobs(state.config);
    return state;
  }

  async function applyFaults(event) {
    event.preventDefault();
    try {
      await putFaults(knobs());
      $("faults-result").textContent = `applied at ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("faults-result").textContent =
        err instanceof SyntaxError ? `scenario is not JSON: ${err.message}` : `refused: ${err.message}`;
    }
    refreshSoon();
  }

  async function toggleOutage() {
    // Only the outage flips; every other knob keeps the value last applied.
    const config = lastOverview && lastOverview.faults ? { ...lastOverview.faults.config } : knobs();
    config.outage = !(lastOverview && lastOverview.faults && lastOverview.faults.active.outage);
    config.scenario = [];
    try {
      await putFaults(config);
      $("faults-result").textContent = `outage ${config.outage ? "on" : "off"}`;
    } catch (err) {
      $("faults-result").textContent = `refused: ${err.message}`;
    }
    refreshSoon();
  }

  async function resetWarehouse() {
    try {
      await call("POST", "/api/warehouse/reset");
      knobsFilled = false;
      $("faults-result").textContent = "mock reset";
    } catch (err) {
      $("faults-result").textContent = `reset failed: ${err.message}`;
    }
    refreshSoon();
  }

  // -- retries --------------------------------------------------------------------------

  function retryFilter() {
    const states = [...document.querySelectorAll('#retry-filter input[name="state"]:checked')].map(
      (i) => i.value,
    );
    const f = { state: states };
    const ec = $("r-error-class").value.trim();
    const key = $("r-key").value.trim();
    const older = $("r-older").value;
    const newer = $("r-newer").value;
    if (ec) f.error_class = ec;
    if (key) f.key = key;
    if (older !== "") f.older_than_minutes = parseFloat(older);
    if (newer !== "") f.newer_than_minutes = parseFloat(newer);
    return f;
  }

  function query(filter) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) {
      if (Array.isArray(v)) v.forEach((item) => q.append(k, item));
      else q.append(k, v);
    }
    return q.toString();
  }

  async function loadRetries() {
    const body = $("retry-table").tBodies[0];
    let page;
    try {
      page = await call("GET", `/api/retries?${query({ ...retryFilter(), limit: 50 })}`);
    } catch (err) {
      $("retry-result").textContent = `Retries: ${err.message}`;
      return;
    }
    clear(body);
    for (const row of page.items) {
      const actions = el("td", { class: "actions" });
      if (row.state === "PENDING" || row.state === "DEAD") {
        actions.append(
          el("button", { type: "button", "data-action": "reprocess", onclick: () => retryAction(row.id, "reprocess") }, "Reprocess"),
        );
      }
      if (row.state === "PENDING" || row.state === "DEAD") {
        actions.append(
          el("button", { type: "button", "data-action": "cancel", onclick: () => retryAction(row.id, "cancel") }, "Cancel"),
        );
      }
      body.append(
        el(
          "tr",
          { "data-retry": row.id, "data-state": row.state, "data-key": row.key || "" },
          el("td", {}, row.id),
          el("td", { class: "mono" }, row.key || ""),
          el("td", { class: `s-${row.state}` }, row.state),
          el("td", {}, row.error_class),
          el("td", {}, `${row.attempts}/${row.max_attempts}`),
          el("td", { class: "clip", title: row.last_error || "" }, row.last_error || ""),
          el("td", {}, when(row.next_attempt_at)),
          el("td", {}, when(row.created_at)),
          actions,
        ),
      );
    }
    $("retry-empty").hidden = page.items.length > 0;
  }

  async function retryAction(id, action) {
    try {
      const row = await call("POST", `/api/retries/${id}/${action}`);
      $("retry-result").textContent = `row ${id}: ${action} done (${row.state})`;
    } catch (err) {
      $("retry-result").textContent = `row ${id}: ${err.message}`;
    }
    await loadRetries();
    refreshSoon();
  }

  async function bulkDryRun() {
    const filter = retryFilter();
    try {
      const result = await call("POST", "/api/retries/reprocess", { ...filter, dry_run: true });
      bulkPending = filter;
      $("bulk-result").textContent = `${result.matched} row(s) would be reprocessed (limit ${result.limit}).`;
      $("bulk-result").dataset.matched = result.matched;
      $("bulk-confirm").textContent = `Reprocess ${result.matched} row(s)`;
      $("bulk-confirm").hidden = result.matched === 0;
      $("bulk-cancel").hidden = result.matched === 0;
    } catch (err) {
      $("bulk-result").textContent = `dry run failed: ${err.message}`;
    }
  }

  async function bulkConfirm() {
    if (!bulkPending) return;
    const filter = bulkPending;
    bulkCancel();
    try {
      const result = await call("POST", "/api/retries/reprocess", { ...filter, dry_run: false });
      $("bulk-result").textContent = `${result.requeued} row(s) made due now.`;
    } catch (err) {
      $("bulk-result").textContent = `bulk reprocess failed: ${err.message}`;
    }
    await loadRetries();
    refreshSoon();
  }

  function bulkCancel() {
    bulkPending = null;
    $("bulk-confirm").hidden = true;
    $("bulk-cancel").hidden = true;
  }

  // -- alerts ---------------------------------------------------------------------------

  function renderAlerts(alerts) {
    if (!alerts) return;
    $("am-status").textContent = alerts.alertmanager;
    const active = clear($("active-alerts").tBodies[0]);
    for (const a of alerts.active) {
      active.append(
        el(
          "tr",
          { "data-alert": a.name, "data-state": a.state },
          el("td", {}, a.name),
          el("td", { class: `sev-${a.severity}` }, a.severity || ""),
          el("td", {}, a.state + (a.inhibited_by.length ? " (inhibited)" : "")),
          el("td", {}, a.summary || ""),
          el("td", {}, when(a.starts_at)),
        ),
      );
    }
    if (!alerts.active.length) {
      active.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, alerts.alertmanager === "up" ? "nothing firing" : "—")));
    }
    const received = clear($("received-alerts").tBodies[0]);
    for (const a of alerts.received) {
      received.append(
        el(
          "tr",
          { "data-alert": a.name, "data-status": a.status },
          el("td", {}, a.name),
          el("td", { class: a.status === "firing" ? "bad" : "good" }, a.status),
          el("td", { class: `sev-${a.severity}` }, a.severity || ""),
          el("td", {}, a.summary || ""),
          el("td", {}, when(a.received_at)),
        ),
      );
    }
    if (!alerts.received.length) {
      received.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "none received")));
    }
  }

  // -- charts ---------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["c0", "c1", "c2", "c3"];

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  async function charts() {
    clearTimeout(chartTimer);
    if (!csrf) return;
    try {
      const data = await call("GET", "/api/charts");
      const status = $("charts-status");
      if (data.prometheus !== "up") {
        status.textContent =
          data.prometheus === "not configured"
            ? "Prometheus is not running (the launcher starts it when the prometheus binary is installed)."
            : `Prometheus is not running or not answering: ${data.problem || ""}`;
        status.className = "warn";
        for (const id of ["chart-throughput", "chart-backlog", "chart-breaker"]) clear($(id));
      } else {
        status.textContent = `from Prometheus, ${new Date(data.end * 1000).toLocaleTimeString()}`;
        status.className = "muted";
        const s = data.series;
        drawChart($("chart-throughput"), [...named(s.placed, "placed"), ...named(s.reserved, "reserved")], data);
        drawChart($("chart-backlog"), named(s.backlog, "backlog"), data);
        drawChart($("chart-breaker"), named(s.breaker_state, null), data, 2);
      }
    } catch (err) {
      $("charts-status").textContent = `Charts: ${err.message}`;
    }
    if (csrf) chartTimer = setTimeout(charts, document.hidden ? CHART_MS * 4 : CHART_MS);
  }

  function named(series, name) {
    if (!series) return [];
    return series.lines.map((line) => ({ name: name || line.series_labels.name || "value", points: line.points }));
  }

  function drawChart(box, lines, data, fixedMax) {
    clear(box);
    const W = 320;
    const H = 120;
    const P = 24;
    const all = lines.flatMap((l) => l.points.map((p) => p[1]));
    const max = fixedMax || Math.max(1, ...all) * 1.1;
    const x = (t) => P + ((t - data.start) / (data.end - data.start)) * (W - P - 4);
    const y = (v) => H - P + 4 - (v / max) * (H - P);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg" });
    chart.append(svg("line", { x1: P, y1: y(0), x2: W - 4, y2: y(0), class: "axis" }));
    const top = svg("text", { x: 2, y: y(max) + 10, class: "tick" });
    top.textContent = fixedMax ? String(fixedMax) : max >= 10 ? Math.round(max) : max.toFixed(1);
    chart.append(top);
    const zero = svg("text", { x: 2, y: y(0), class: "tick" });
    zero.textContent = "0";
    chart.append(zero);
    lines.forEach((line, i) => {
      if (!line.points.length) return;
      const d = line.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      chart.append(svg("path", { d, class: `line ${COLOURS[i % COLOURS.length]}` }));
      const label = svg("text", { x: W - 70, y: 12 + i * 12, class: `legend ${COLOURS[i % COLOURS.length]}` });
      const last = line.points[line.points.length - 1][1];
      label.textContent = `${line.name} ${last >= 10 ? Math.round(last) : last.toFixed(2)}`;
      chart.append(label);
    });
    if (!lines.some((l) => l.points.length)) {
      const none = svg("text", { x: W / 2 - 30, y: H / 2, class: "tick" });
      none.textContent = "no data yet";
      chart.append(none);
    }
    box.append(chart);
  }

  // -- wiring ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("place-form").addEventListener("submit", placeOrders);
    $("search-form").addEventListener("submit", searchOrder);
    $("force-open").addEventListener("click", () => forceBreaker("OPEN"));
    $("force-closed").addEventListener("click", () => forceBreaker("CLOSED"));
    $("force-clear").addEventListener("click", () => forceBreaker(null));
    $("outage-toggle").addEventListener("click", toggleOutage);
    $("warehouse-reset").addEventListener("click", resetWarehouse);
    $("faults-form").addEventListener("submit", applyFaults);
    $("scenario-preset").addEventListener("click", () => {
      $("f-scenario").value = JSON.stringify([
        { duration_seconds: 30, outage: true },
        { duration_seconds: 60, failure_rate: 0.5 },
      ]);
    });
    $("retry-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      bulkCancel();
      loadRetries();
    });
    $("bulk-dry-run").addEventListener("click", bulkDryRun);
    $("bulk-confirm").addEventListener("click", bulkConfirm);
    $("bulk-cancel").addEventListener("click", bulkCancel);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && csrf) startPolling();
    });
    try {
      const session = await call("GET", "/api/session");
      if (session.signed_in) {
        csrf = session.csrf;
        showConsole();
        return;
      }
    } catch (_) {
      // fall through to the sign-in form
    }
    showSignIn("");
  });
})();

// The operations page: asks for an admin key, polls /v1/ops/summary every 2 s, draws it.
// Plain JavaScript, no build step. Everything shown comes from the summary; text from it is
// only ever set as text (textContent), never as markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const HISTORY = 150; // points kept for the charts (5 minutes at 2 s)
  const KEY_SLOT = "atp.dashboard.key";
  const SKU_SLOT = "atp.dashboard.sku";
  const COLORS = { wms: "#1f6feb", erp: "#d4691e" };
  const FALLBACK_COLORS = ["#7b3fe4", "#1a7f37", "#b0186e", "#5d6d7e"];

  const $ = (id) => document.getElementById(id);
  const history = [];
  let timer = null;
  let polling = false;
  let again = false; // asked for while a poll was in flight: poll once more right after
  let lastSummary = null;

  // -- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function colorOf(source, i) {
    return COLORS[source] || FALLBACK_COLORS[i % FALLBACK_COLORS.length];
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (!isFinite(seconds)) return iso;
    if (seconds < 1) return "just now";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function freshness(iso) {
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (seconds < 300) return "fresh";
    if (seconds < 86400) return "aging";
    return "old";
  }

  function number(value, digits) {
    if (value === null || value === undefined) return "—";
    return Number(value).toLocaleString(undefined, {
      maximumFractionDigits: digits === undefined ? 0 : digits,
    });
  }

  function figure(label, value, level, title) {
    return el("div", { class: `figure ${level || ""}`, title: title || null },
      el("div", { class: "value" }, value),
      el("div", { class: "label" }, label));
  }

  function lagLevel(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return "ok";
    if (seconds < 10) return "warn";
    return "bad";
  }

  function lagText(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 10) return `${number(seconds, 2)} s`;
    if (seconds < 600) return `${number(seconds, 0)} s`;
    return `${number(seconds / 60, 1)} min`;
  }

  // -- signing in and out ------------------------------------------------------------------

  function key() {
    return sessionStorage.getItem(KEY_SLOT);
  }

  function setStatus(text, level) {
    $("status-text").textContent = text;
    $("status-dot").className = `dot ${level || ""}`;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_SLOT);
    if (timer) clearTimeout(timer);
    timer = null;
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    const error = $("key-error");
    error.textContent = message || "";
    error.hidden = !message;
    setStatus("signed out", "");
    $("key-input").value = "";
    $("key-input").focus();
  }

  function signIn(value) {
    sessionStorage.setItem(KEY_SLOT, value);
    $("key-error").hidden = true;
    setStatus("connecting…", "stale");
    history.length = 0;
    poll();
  }

  // -- polling ------------------------------------------------------------------------------

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    const secret = key();
    if (!secret) return;
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    again = false;
    const sku = sessionStorage.getItem(SKU_SLOT);
    const url = "/v1/ops/summary" + (sku ? `?sku=${encodeURIComponent(sku)}` : "");
    try {
      const response = await fetch(url, {
        headers: { Authorization: `Bearer ${secret}`, Accept: "application/json" },
        cache: "no-store",
      });
      if (response.status === 401) {
        signOut("That key is not known to the service (401). Paste a key with the admin " +
          "scope, such as the one `atp up` prints as \"admin\".");
        return;
      }
      if (response.status === 403) {
        signOut("That key is valid but does not have the admin scope (403). This page needs " +
          "a key with the admin scope.");
        return;
      }
      if (response.status === 422 && sku) {
        sessionStorage.removeItem(SKU_SLOT);
        $("sku-hint").textContent = `"${sku}" is not a valid sku: letters, digits and . _ : / - ` +
          "only, up to 64 characters.";
        $("sku-hint").hidden = false;
        $("sku-result").hidden = true;
        again = true;
        return;
      }
      if (!response.ok) {
        const retry = response.status === 503 ? "the store is unreachable" : `HTTP ${response.status}`;
        setStatus(`${retry}; retrying`, "down");
        return;
      }
      const summary = await response.json();
      show(summary);
      setStatus("live", "live");
    } catch (exc) {
      setStatus("API unreachable; retrying", "down");
    } finally {
      polling = false;
      if (key()) {
        if (again) poll();
        else schedule();
      }
    }
  }

  // -- drawing ------------------------------------------------------------------------------

  function show(summary) {
    lastSummary = summary;
    $("sign-in").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    const sources = Object.keys(summary.sync);
    history.push({
      at: Date.parse(summary.as_of),
      rate: Object.assign({}, summary.fold.events_per_second),
      lag: Object.fromEntries(sources.map((s) => [s, summary.sync[s].lag_seconds])),
    });
    while (history.length > HISTORY) history.shift();
    showSync(summary);
    showCharts(sources);
    showSku(summary.sku);
    showDeadLetters(summary.dead_letters, summary.fold);
    showDrift(summary.drift);
    showReservations(summary.reservations);
    showOutbox(summary);
    const when = new Date(summary.as_of);
    $("updated").textContent = `updated ${when.toLocaleTimeString()}`;
  }

  function showSync(summary) {
    const box = clear($("sync-figures"));
    let unmeasured = 0;
    Object.entries(summary.sync).forEach(([source, sync], i) => {
      if (sync.lag_seconds === null) unmeasured += 1;
      const rate = summary.fold.events_per_second[source];
      const name = el("div", { class: "source-name" }, source);
      name.style.borderColor = colorOf(source, i); // CSSOM, which the page's CSP allows
      box.append(el("div", { class: "source-row", "data-source": source }, name,
        figure("sync lag", lagText(sync.lag_seconds), lagLevel(sync.lag_seconds),
          sync.as_of ? `measured ${sync.as_of}` : "no worker has measured it"),
        figure("folded / s", number(rate, 1))));
    });
    const note = $("sync-note");
    const measured = Object.values(summary.sync).map((s) => s.as_of).filter(Boolean).sort();
    note.textContent = unmeasured
      ? "A source without a figure has no worker reporting on it (no `atp worker` running, " +
        "or none assigned its topic)."
      : `Lag: how long the oldest inbound event not yet folded has waited. Measured ${ago(measured[0])}.`;
  }

  function showCharts(sources) {
    drawChart($("rate-chart"), sources, (point, s) => point.rate[s], (v, max) => number(v, digits(max)));
    drawChart($("lag-chart"), sources, (point, s) => point.lag[s], (v, max) => `${number(v, digits(max))} s`);
    const legend = clear($("chart-legend"));
    sources.forEach((s, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colorOf(s, i); // CSSOM, which the page's CSP allows
      legend.append(el("span", {}, swatch, s));
    });
  }

  function drawChart(canvas, sources, valueOf, label) {
    const cssWidth = canvas.clientWidth || 300;
    const cssHeight = Number(canvas.getAttribute("height")) || 120;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssWidth * ratio)) {
      canvas.style.height = `${cssHeight}px`;
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const left = 46, right = 8, top = 8, bottom = 18;
    const width = cssWidth - left - right, height = cssHeight - top - bottom;
    let max = 0;
    for (const point of history) {
      for (const s of sources) {
        const v = valueOf(point, s);
        if (typeof v === "number" && v > max) max = v;
      }
    }
    max = niceCeiling(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5d6d7e";
    ctx.strokeStyle = "#dde3e9";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = top + height - (height * i) / 2;
      ctx.beginPath();
      ctx.moveTo(left, y + 0.5);
      ctx.lineTo(left + width, y + 0.5);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(label((max * i) / 2, max), left - 6, y);
    }
    const span = POLL_MS * (HISTORY - 1);
    const end = history.length ? history[history.length - 1].at : Date.now();
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(`last ${Math.round(span / 60000)} min`, left, top + height + 4);
    ctx.textAlign = "right";
    ctx.fillText("now", left + width, top + height + 4);
    sources.forEach((s, i) => {
      ctx.strokeStyle = colorOf(s, i);
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      for (const point of history) {
        const v = valueOf(point, s);
        if (typeof v !== "number") { started = false; continue; }
        const x = left + width - ((end - point.at) / span) * width;
        const y = top + height - (max ? (v / max) * height : 0);
        if (x < left) continue;
        if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        started = true;
      }
      ctx.stroke();
    });
  }

  function digits(max) {
    return max < 1 ? 2 : max < 10 ? 1 : 0;
  }

  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function channelName(channel) {
    return channel === "*" ? "* (channels without a policy)" : channel;
  }

  function showSku(sku) {
    const result = $("sku-result");
    if (!sku) {
      result.hidden = true;
      return;
    }
    result.hidden = false;
    $("sku-hint").hidden = true;
    $("sku-name").textContent = sku.sku;
    const seen = sku.channels.some((c) => c.as_of);
    $("sku-note").textContent = seen ? "" : "never seen by the service: ATP 0 everywhere";

    const head = clear($("sku-atp-head"));
    const headRow = el("tr", {}, el("th", { scope: "col" }, "Channel"), el("th", { scope: "col" }, "ATP"));
    sku.sites.forEach((site) => headRow.append(el("th", { scope: "col" }, site)));
    head.append(headRow);
    const body = clear($("sku-atp-body"));
    const rows = {};
    for (const answer of sku.channels) {
      const bySite = Object.fromEntries(answer.sites.map((row) => [row.site, row]));
      const tr = el("tr", { "data-channel": answer.channel },
        el("th", { scope: "row" }, channelName(answer.channel)),
        el("td", { class: "atp" }, number(answer.atp)));
      for (const site of sku.sites) {
        const row = bySite[site];
        tr.append(row ? el("td", {}, number(row.atp)) : el("td", { class: "none", title: "not sold from this site" }, "—"));
        if (row && !rows[site]) rows[site] = row;
      }
      body.append(tr);
    }

    const sites = clear($("sku-sites-body"));
    for (const site of sku.sites) {
      const row = rows[site];
      if (!row) continue;
      const heard = el("td", { class: "sources", "data-label": "Sources last heard" });
      const entries = Object.entries(row.sources || {});
      if (!entries.length) heard.append(el("span", { class: "empty" }, "nothing yet"));
      entries.forEach(([source, iso], i) => {
        if (i) heard.append(" · ");
        heard.append(el("span", { class: freshness(iso), title: iso }, `${source} ${ago(iso)}`));
      });
      // data-label: on a phone each site is a block of labelled figures (dashboard.css).
      const cell = (label, text, title) => el("td", { "data-label": label, title }, text);
      sites.append(el("tr", { "data-site": site },
        el("th", { scope: "row" }, site),
        cell("On hand", number(row.on_hand)), cell("Allocated", number(row.allocated)),
        cell("Quarantined", number(row.quarantined)), cell("Reserved", number(row.reserved)),
        cell("In transit", number(row.in_transit)), heard,
        cell("Changed", row.as_of ? ago(row.as_of) : "never", row.as_of || null),
        cell("Version", number(row.version))));
    }
  }

  function showDeadLetters(dead, fold) {
    const box = clear($("dlq-figures"));
    box.append(figure("dead letters", number(dead.total)));
    box.append(figure("per second", number(fold.dead_letters_per_second, 2)));
    const rate = fold.failure_rate;
    box.append(figure("failure rate", rate === null ? "—" : `${number(rate * 100, 2)} %`,
      rate ? (rate > 0.01 ? "bad" : "warn") : "ok", "dead-lettered share of inbound events, now"));
    const codes = clear($("dlq-codes"));
    Object.entries(dead.by_code).forEach(([code, n]) => {
      codes.append(el("span", { class: "chip", "data-code": code }, `${code} `, el("b", {}, number(n))));
    });
    const list = clear($("dlq-latest"));
    if (!dead.latest.length) list.append(el("li", { class: "empty" }, "No dead letter."));
    for (const d of dead.latest) {
      list.append(el("li", { "data-code": d.code },
        el("span", { class: "when", title: d.dead_lettered_at }, ago(d.dead_lettered_at)), " ",
        el("span", { class: "code" }, d.code),
        el("span", { class: "detail" }, d.detail),
        el("span", { class: "where" },
          `${d.topic}[${d.partition}]@${d.offset}` + (d.key ? ` · key ${d.key}` : ""))));
    }
  }

  function showDrift(drift) {
    const box = clear($("drift-figures"));
    const buckets = Object.entries(drift.by_bucket);
    if (!buckets.length) box.append(figure("drifts", "0", "ok"));
    for (const [bucket, n] of buckets) {
      box.append(figure(`${bucket} drifts`, number(n.events), "", `${number(n.units)} units in all`));
      box.append(figure(`${bucket} units`, number(n.units)));
    }
    const list = clear($("drift-latest"));
    if (!drift.latest.length) list.append(el("li", { class: "empty" }, "No snapshot has disagreed."));
    for (const d of drift.latest) {
      const changes = Object.entries(d.buckets || {})
        .map(([b, v]) => `${b}: folded ${v.folded} → snapshot ${v.snapshot}`).join("; ");
      list.append(el("li", {},
        el("span", { class: "when", title: d.detected_at }, ago(d.detected_at)), " ",
        el("span", { class: "code" }, `${d.sku}@${d.site}`), ` (${d.source})`,
        el("span", { class: "detail" }, changes)));
    }
  }

  function showReservations(res) {
    const box = clear($("res-figures"));
    const note = $("res-audit");
    if (!res.by_status) {
      box.append(figure("reservations", "—"));
      note.textContent = "No audit yet: a worker counts reservations by status every " +
        "ATP_WORKER_AUDIT_INTERVAL_SECONDS (60 s by default).";
      return;
    }
    for (const status of ["held", "confirmed", "consumed", "released", "expired"]) {
      box.append(figure(status, number(res.by_status[status] || 0)));
    }
    const audit = res.audit;
    const mismatches = audit.mismatches || 0;
    note.textContent = `Counted by the audit ${ago(audit.at)} (${number(audit.seconds, 2)} s): ` +
      (mismatches ? `${mismatches} item-site(s) whose reserved units differ from their ` +
        "reservations" : "reserved units match the reservations on every item-site.");
    note.className = mismatches ? "hint old" : "hint";
  }

  function showOutbox(summary) {
    const box = clear($("outbox-figures"));
    const backlog = summary.outbox.backlog;
    box.append(figure("outbox backlog", number(backlog), backlog > 1000 ? "warn" : "ok",
      "outbox entries waiting for Kafka"));
    box.append(figure("workers", number(summary.workers.filter((w) => w.live).length)));
    const list = clear($("workers"));
    if (!summary.workers.length) list.append(el("li", { class: "empty" }, "No worker has reported."));
    for (const w of summary.workers) {
      const parts = w.partitions.length;
      const worst = Math.max(0, ...w.partitions.map((p) => p.lag_seconds));
      list.append(el("li", { class: w.live ? "" : "gone" },
        el("strong", {}, w.worker),
        ` · ${parts} partition${parts === 1 ? "" : "s"} · worst lag ${lagText(worst)} · ` +
          `reported ${ago(w.as_of)}` + (w.live ? "" : " (not reporting)")));
    }
  }

  // -- wiring -------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("key-input").value.trim();
      if (value) signIn(value);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("sku-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("sku-input").value.trim();
      if (value) sessionStorage.setItem(SKU_SLOT, value);
      else sessionStorage.removeItem(SKU_SLOT);
      $("sku-hint").textContent = "Loading…";
      poll();
    });
    window.addEventListener("resize", () => {
      if (lastSummary) showCharts(Object.keys(lastSummary.sync));
    });
    const sku = sessionStorage.getItem(SKU_SLOT);
    if (sku) $("sku-input").value = sku;
    if (key()) {
      setStatus("connecting…", "stale");
      poll();
    } else {
      signOut("");
    }
  });
})();

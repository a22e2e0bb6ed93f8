// A run's page: its steps as a timeline (attempts, retries and their errors, waits, compensations,
// signals with who sent them), the current step followed live over server-sent events (no
// reload), the outcome, the input, and the per-system sequence picture drawn as SVG from the
// daemon's Mermaid view.
"use strict";

(function () {
  const { el } = waymark;
  const runId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const events = new Map(); // seq -> event row
  let progress = null; // { label, message }
  let ended = null; // { outcome, code }
  let summary = null;
  let source = null;
  const $ = (id) => document.getElementById(id);

  // ---- the model: steps, waits and signals folded from the events ----
  function stepKey(ref) {
    if (!ref) return "?";
    if ("Workflow" in ref) return "w" + ref.Workflow;
    if ("Compensation" in ref) return "c" + ref.Compensation;
    return JSON.stringify(ref);
  }

  function fold() {
    const steps = new Map(), waits = new Map(), signals = [], marks = [];
    const rows = [...events.values()].sort((a, b) => a.seq - b.seq);
    for (const row of rows) {
      const [kind, e] = Object.entries(row.event)[0];
      const at = Date.parse(row.at);
      if (kind === "StepScheduled") {
        steps.set(stepKey(e.step), {
          key: stepKey(e.step), label: e.label, activity: e.activity,
          compensation: "Compensation" in e.step, start: at, end: null,
          status: "waiting", attempts: [], error: null,
        });
      } else if (kind === "AttemptStarted") {
        const s = steps.get(stepKey(e.step));
        if (s) { s.attempts.push({ n: e.attempt, start: at, error: null }); s.status = "running"; }
      } else if (kind === "AttemptFailed" || kind === "AttemptInterrupted") {
        const s = steps.get(stepKey(e.step));
        if (s) {
          const a = s.attempts.find((x) => x.n === e.attempt);
          const error = kind === "AttemptInterrupted" ? "interrupted (the daemon stopped)" : e.error;
          if (a) { a.end = at; a.error = error; a.retryable = e.retryable; a.next = e.next_retry_at; }
          s.status = e.next_retry_at ? "retrying" : s.status;
        }
      } else if (kind === "StepCompleted") {
        const s = steps.get(stepKey(e.step));
        if (s) { s.end = at; s.status = "completed"; }
      } else if (kind === "StepFailed") {
        const s = steps.get(stepKey(e.step));
        if (s) { s.end = at; s.status = "failed"; s.error = e.error; }
      } else if (kind === "TimerStarted") {
        waits.set(e.position, { position: e.position, start: at, fireAt: Date.parse(e.fire_at), end: null });
      } else if (kind === "TimerFired") {
        const w = waits.get(e.position);
        if (w) w.end = at;
      } else if (kind === "SignalWaitStarted") {
        // A wait for a signal with a deadline (an approval): ended by the signal or the deadline.
        waits.set(e.position, { position: e.position, start: at, fireAt: Date.parse(e.deadline), end: null, signal: e.name });
      } else if (kind === "SignalWaitTimedOut") {
        const w = waits.get(e.position);
        if (w) { w.end = at; w.timedOut = true; }
      } else if (kind === "SignalConsumed") {
        const own = waits.get(e.position);
        if (own && own.signal === e.name && !own.end) {
          own.end = at; own.endedBy = e.name;
        } else {
          // A timer that raced this signal (histories before signal waits had deadlines) ended with it.
          for (const w of waits.values()) {
            if (!w.end && !w.signal && w.start <= at) { w.end = at; w.endedBy = e.name; }
          }
        }
      } else if (kind === "SignalReceived") {
        let reason = "";
        try { reason = JSON.parse(e.payload); } catch (_) { reason = e.payload; }
        signals.push({ at, name: e.name, by: e.sent_by, reason: typeof reason === "string" ? reason : JSON.stringify(reason) });
      } else if (kind === "CompensationStarted") {
        marks.push({ at, text: (e.cancelled ? "cancelled: " : "compensating: ") + e.reason, cls: "m-comp" });
      } else if (kind.startsWith("Run") && kind !== "RunStarted") {
        marks.push({ at, text: kind.replace(/^Run/, "").toLowerCase(), cls: "m-end" });
      }
    }
    return { rows, steps: [...steps.values()], waits: [...waits.values()], signals, marks };
  }

  // ---- rendering ----
  function pct(t, t0, span) { return Math.max(0, Math.min(100, ((t - t0) / span) * 100)); }

  function bar(cls, start, end, t0, span, title) {
    const b = el("div", { class: "bar " + cls, title });
    b.style.left = pct(start, t0, span) + "%";
    b.style.width = Math.max(0.6, pct(end, t0, span) - pct(start, t0, span)) + "%";
    return b;
  }

  // The runbook's steps: sub-steps whose labels start with "N." are grouped under step N (the
  // group open while it runs or failed); other steps stand alone. Waits, signals and the run's
  // turning points are placed among them by time.
  function groupsOf(steps) {
    const groups = [];
    const byKey = new Map();
    for (const s of steps) {
      const n = s.compensation ? null : (s.label.match(/^(\d+)\.\s/) || [])[1];
      const key = n ? "step " + n : "single " + s.key;
      let g = byKey.get(key);
      if (!g) {
        g = { key, number: n, steps: [] };
        byKey.set(key, g);
        groups.push(g);
      }
      g.steps.push(s);
    }
    return groups;
  }

  function stepRow(s, t0, span, now) {
    const cls = s.compensation ? "b-comp" : s.status === "completed" ? "b-done" : s.status === "failed" ? "b-fail" : "b-run";
    const track = el("div", { class: "track" }, bar(cls, s.start, s.end || now, t0, span, s.activity));
    for (const a of s.attempts.filter((x) => x.error)) {
      const tick = el("span", { class: "tick", title: "attempt " + a.n + ": " + a.error });
      tick.style.left = pct(a.end || a.start, t0, span) + "%";
      track.append(tick);
    }
    const took = ((s.end || now) - s.start) / 1000;
    const details = [el("span", { class: "muted", text: (s.end ? "" : "running · ") + waymark.duration(took) + (s.attempts.length > 1 ? " · " + s.attempts.length + " attempts" : "") })];
    const failed = s.attempts.filter((a) => a.error);
    const errs = failed.length ? el("ul", { class: "errors" }, ...failed.map((a) =>
      el("li", {}, "attempt " + a.n + (a.next ? " (retried)" : "") + ": ", el("span", { class: "err", text: a.error })))) : null;
    if (s.error && !failed.some((a) => a.error === s.error)) details.push(el("div", { class: "err", text: s.error }));
    if (!s.end && progress && progress.label === s.label) details.push(el("div", { class: "progress-line", text: progress.message }));
    return el("div", { class: "row" + (s.compensation ? " comp" : "") + " st-" + s.status, "data-step": s.key },
      el("div", { class: "name" }, el("span", { class: "step-label", text: (s.compensation ? "↩ " : "") + s.label }), el("br"), ...details, errs),
      track);
  }

  function waitRow(w, t0, span, now) {
    const end = w.end || Math.min(now, w.fireAt);
    const finished = ended || (summary && summary.finished);
    const until = new Date(w.fireAt).toLocaleTimeString();
    const what = w.endedBy
      ? "waited for " + w.endedBy + " (until " + until + " at most)"
      : w.timedOut
        ? "no " + w.signal + " before " + until + " (timed out)"
        : w.signal
          ? "waiting for " + w.signal + " until " + until
          : "wait until " + until;
    const left = w.end || finished ? " · " + waymark.duration((end - w.start) / 1000)
      : " · " + waymark.duration(Math.max(0, (w.fireAt - Date.now()) / 1000)) + " left";
    return el("div", { class: "row wait" },
      el("div", { class: "name" }, el("span", { text: what + left })),
      el("div", { class: "track" }, bar("b-wait", w.start, end, t0, span, w.signal ? "waiting for " + w.signal : "timer")));
  }

  const openGroups = new Map(); // the operator's choice, kept across renders
  function groupNode(g, t0, span, now) {
    if (g.steps.length === 1) return stepRow(g.steps[0], t0, span, now);
    const start = Math.min(...g.steps.map((s) => s.start));
    const done = g.steps.every((s) => s.end) && (g.waits || []).every((w) => w.end);
    const end = done ? Math.max(...g.steps.map((s) => s.end), ...(g.waits || []).map((w) => w.end)) : now;
    const failed = g.steps.some((s) => s.status === "failed");
    const retries = g.steps.reduce((n, s) => n + Math.max(0, s.attempts.length - 1), 0);
    const cls = failed ? "b-fail" : done ? "b-done" : "b-run";
    const waits = (g.waits || []).length;
    const title = "Step " + g.number + " · " + g.steps.length + " sub-steps" + (waits ? " · " + waits + " waits" : "") + (retries ? " · " + retries + " retries" : "");
    const summaryRow = el("summary", { class: "row group-row" },
      el("div", { class: "name" }, el("strong", { text: title }), el("br"),
        el("span", { class: "muted", text: (done ? "" : "running · ") + waymark.duration((end - start) / 1000) + " · " + g.steps[g.steps.length - 1].label })),
      el("div", { class: "track" }, bar(cls, start, end, t0, span, title)));
    const rows = g.steps.map((s) => ({ at: s.start, node: stepRow(s, t0, span, now) }))
      .concat((g.waits || []).map((w) => ({ at: w.start, node: waitRow(w, t0, span, now) })))
      .sort((a, b) => a.at - b.at);
    const d = el("details", { class: "group", "data-group": g.key }, summaryRow, ...rows.map((r) => r.node));
    d.open = openGroups.has(g.key) ? openGroups.get(g.key) : (!done || failed);
    // Only the operator's clicks are remembered (setting `open` above fires "toggle" too).
    summaryRow.addEventListener("click", () => openGroups.set(g.key, !d.open));
    return d;
  }

  function renderTimeline(m) {
    const box = $("timeline");
    if (!m.rows.length) { box.replaceChildren(el("p", { class: "muted", text: "no events yet" })); return; }
    const t0 = Date.parse(m.rows[0].at);
    const last = Date.parse(m.rows[m.rows.length - 1].at);
    const now = ended || (summary && summary.finished) ? last : Math.max(last, Date.now());
    const span = Math.max(1000, now - t0);
    const items = [];
    const groups = groupsOf(m.steps);
    // A timer belongs to the step group that was going on when it started (a settle wait).
    for (const w of m.waits) {
      const before = m.steps.filter((st) => st.start <= w.start).pop();
      const g = before && groups.find((x) => x.number && x.steps.includes(before));
      if (g) (g.waits = g.waits || []).push(w);
      else items.push({ at: w.start, node: waitRow(w, t0, span, now) });
    }
    for (const g of groups) {
      items.push({ at: Math.min(...g.steps.map((st) => st.start)), node: groupNode(g, t0, span, now) });
    }
    for (const s of m.signals) {
      const track = el("div", { class: "track" });
      const mark = el("span", { class: "signal-mark", title: s.name + " by " + s.by });
      mark.style.left = pct(s.at, t0, span) + "%";
      track.append(mark);
      items.push({ at: s.at, node: el("div", { class: "row signal", "data-signal": s.name },
        el("div", { class: "name" }, el("strong", { text: s.name }), " by ", el("span", { class: "by", text: s.by }),
          s.reason ? el("div", { class: "muted", text: "“" + s.reason + "”" }) : null),
        track) });
    }
    for (const k of m.marks) {
      const track = el("div", { class: "track" });
      const mark = el("span", { class: "signal-mark " + k.cls });
      mark.style.left = pct(k.at, t0, span) + "%";
      track.append(mark);
      items.push({ at: k.at, node: el("div", { class: "row mark" }, el("div", { class: "name", text: k.text }), track) });
    }
    items.sort((a, b) => a.at - b.at);
    box.replaceChildren(...items.map((i) => i.node));
  }

  function renderCurrent(m) {
    const open = m.steps.filter((s) => !s.end);
    const cur = open[open.length - 1];
    const label = $("current-step").querySelector(".label");
    const elapsed = $("current-step").querySelector(".elapsed");
    if (ended || (summary && summary.finished)) {
      label.textContent = "finished";
      elapsed.textContent = "";
      $("current-step").dataset.step = "";
    } else if (cur) {
      label.textContent = cur.label;
      $("current-step").dataset.step = cur.key;
      const tries = cur.attempts.length > 1 ? " · attempt " + cur.attempts.length : "";
      elapsed.textContent = waymark.duration((Date.now() - cur.start) / 1000) + tries;
    } else {
      const signalWait = m.waits.find((w) => w.signal && !w.end);
      label.textContent = summary && summary.state === "held" ? "held"
        : signalWait ? "waiting for " + signalWait.signal
        : "waiting (a timer or a signal such as approve)";
      $("current-step").dataset.step = "";
      elapsed.textContent = "";
    }
    const p = progress && cur && progress.label === cur.label ? progress.message : (progress && !cur ? "" : progress ? progress.message : "");
    $("current-progress").textContent = p || "";
  }

  function renderEvents(m) {
    $("events").replaceChildren(...m.rows.map((r) => {
      const [kind] = Object.keys(r.event);
      return el("li", { value: r.seq }, el("code", { text: new Date(r.at).toLocaleTimeString() }), " " + kind);
    }));
  }

  // ---- the sequence picture: Mermaid's sequenceDiagram subset of view::mermaid, as SVG ----
  function renderSequence(text) {
    const NS = "http://www.w3.org/2000/svg";
    const parts = [], lines = [];
    for (const raw of (text || "").split("\n")) {
      const l = raw.trim();
      let m;
      if ((m = l.match(/^participant (\S+) as (.+)$/))) parts.push({ id: m[1], name: m[2] });
      else if ((m = l.match(/^Note over (\S+): (.*)$/))) lines.push({ note: true, at: m[1], text: m[2] });
      else if ((m = l.match(/^(\S+?)(--x|-->>|->>)(\S+?): (.*)$/))) lines.push({ from: m[1], arrow: m[2], to: m[3], text: m[4] });
    }
    const box = $("sequence");
    if (!parts.length) { box.replaceChildren(el("p", { class: "muted", text: "nothing yet" })); return; }
    const colW = 190, rowH = 26, top = 44;
    const x = (id) => 170 + Math.max(0, parts.findIndex((p) => p.id === id)) * colW;
    const width = 170 * 2 + (parts.length - 1) * colW;
    const height = top + lines.length * rowH + 20;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "sequence of calls to each system");
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    const defs = add("defs", {});
    const marker = document.createElementNS(NS, "marker");
    for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" })) marker.setAttribute(k, v);
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", "M0,0 L10,5 L0,10 z");
    path.setAttribute("class", "seq-head");
    marker.append(path);
    defs.append(marker);
    for (const p of parts) {
      add("line", { x1: x(p.id), y1: top - 8, x2: x(p.id), y2: height - 6, class: "seq-life" });
      add("rect", { x: x(p.id) - 85, y: 6, width: 170, height: 26, rx: 5, class: "seq-box" });
      add("text", { x: x(p.id), y: 24, "text-anchor": "middle", class: "seq-name" }, p.name);
    }
    lines.forEach((l, i) => {
      const y = top + i * rowH + 14;
      const short = (t) => (t.length > 46 ? t.slice(0, 45) + "…" : t);
      if (l.note) {
        const w = Math.max(150, short(l.text).length * 6.6 + 16);
        add("rect", { x: x(l.at) - w / 2, y: y - 13, width: w, height: 19, rx: 3, class: "seq-note" });
        add("text", { x: x(l.at), y: y, "text-anchor": "middle", class: "seq-note-text" }, short(l.text)).append(
          Object.assign(document.createElementNS(NS, "title"), { textContent: l.text }));
        return;
      }
      const x1 = x(l.from), x2 = x(l.to);
      const cls = l.arrow === "->>" ? "seq-call" : l.arrow === "--x" ? "seq-fail" : "seq-reply";
      add("line", { x1, y1: y, x2: x2 + (x2 > x1 ? -2 : 2), y2: y, class: cls, "marker-end": "url(#arrow)" });
      const t = add("text", { x: (x1 + x2) / 2, y: y - 4, "text-anchor": "middle", class: "seq-text " + cls }, short(l.text));
      t.append(Object.assign(document.createElementNS(NS, "title"), { textContent: l.text }));
    });
    box.replaceChildren(svg);
  }

  function renderSummary() {
    const s = summary;
    if (!s) return;
    document.title = "Waymark · " + s.workflow + " · " + s.run.slice(0, 8);
    $("run-id").textContent = s.run;
    $("run-title").textContent = s.workflow + " v" + s.version;
    const badge = $("run-state");
    badge.className = waymark.stateClass(s.state);
    badge.textContent = s.state;
    $("run-cluster").textContent = s.cluster || "–";
    $("run-operator").textContent = s.started_by;
    $("run-started").textContent = waymark.time(s.started_at);
    $("run-reason").hidden = !s.reason;
    $("run-reason").textContent = s.reason || "";
    $("outcome").textContent = s.finished ? s.state : "not finished";
    let detail = s.finished ? (s.outcome || "") : "";
    try { detail = JSON.stringify(JSON.parse(detail), null, 2); } catch (_) { /* plain text */ }
    $("outcome-detail").hidden = !detail;
    $("outcome-detail").textContent = detail;
    $("outcome-card").className = "card outcome-" + (s.finished ? s.state : "open");
    $("input").textContent = JSON.stringify(s.input, null, 2);
    renderSequence(s.mermaid);
    for (const b of document.querySelectorAll("#actions button")) b.disabled = !!s.finished;
  }

  function render() {
    if (summary) {
      const open = !ended && !summary.finished;
      const took = open ? (Date.now() - Date.parse(summary.started_at)) / 1000 : summary.duration_s;
      $("run-duration").textContent = waymark.duration(took);
    }
    const m = fold();
    renderTimeline(m);
    renderCurrent(m);
    renderEvents(m);
  }

  let summaryTimer = null;
  async function loadSummary() {
    try {
      summary = await waymark.getJson("/web/api/runs/" + encodeURIComponent(runId));
      waymark.showError("");
      renderSummary();
      render();
    } catch (e) {
      waymark.showError("Cannot load run " + runId + ": " + e.message);
    }
  }
  function soonSummary() {
    clearTimeout(summaryTimer);
    summaryTimer = setTimeout(loadSummary, 200);
  }

  // ---- live: the daemon's follow stream ----
  function follow() {
    source = new EventSource("/web/api/runs/" + encodeURIComponent(runId) + "/follow");
    source.onopen = () => { $("live-status").textContent = "live"; };
    source.onmessage = (msg) => {
      const line = JSON.parse(msg.data);
      if (line.type === "event") {
        events.set(line.seq, line);
        soonSummary();
        render();
      } else if (line.type === "progress") {
        progress = { label: line.label, message: line.message };
        render();
      } else if (line.type === "end") {
        ended = { outcome: line.outcome, code: line.code };
        $("live-status").textContent = line.code === 0 ? "ended" : "ended (exit status " + line.code + ")";
        source.close();
        loadSummary();
      }
    };
    source.onerror = () => {
      if (!ended) $("live-status").textContent = "connection lost; reconnecting…";
    };
  }

  // ---- the buttons: each asks for a reason, journaled with the operator ----
  let pending = null;
  for (const b of document.querySelectorAll("#actions button")) {
    b.addEventListener("click", () => {
      pending = b.dataset.signal;
      $("reason-title").textContent = b.textContent + " this run?";
      $("reason").value = "";
      $("reason-dialog").showModal();
      $("reason").focus();
    });
  }
  $("close-dialog").addEventListener("click", () => $("reason-dialog").close());
  $("reason-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const reason = $("reason").value.trim();
    if (!reason) { $("reason").reportValidity(); return; }
    $("reason-dialog").close();
    $("action-status").textContent = "sending " + pending + "…";
    try {
      const r = await waymark.postJson("/web/api/runs/" + encodeURIComponent(runId) + "/signal", { signal: pending, reason });
      $("action-status").textContent = r.signal + " sent by " + r.sent_by;
    } catch (err) {
      $("action-status").textContent = pending + " refused: " + err.message;
    }
    soonSummary();
  });

  setInterval(() => { if (!ended && !(summary && summary.finished)) render(); }, 1000);
  loadSummary().then(follow);
})();

// The list of runs: filters by state, workflow, cluster and operator; refreshed every few
// seconds (in place, no reload).
"use strict";

(function () {
  const { el } = waymark;
  let rows = [];
  const f = (id) => document.getElementById(id);

  function matches(r) {
    const has = (v, q) => !q || String(v || "").toLowerCase().includes(q.toLowerCase());
    return (!f("f-state").value || r.state === f("f-state").value)
      && has(r.workflow, f("f-workflow").value)
      && has(r.cluster, f("f-cluster").value)
      && has(r.operator, f("f-operator").value);
  }

  function render() {
    const body = document.querySelector("#runs tbody");
    const shown = rows.filter(matches);
    body.replaceChildren(...shown.map((r) => el("tr", { "data-run": r.run, "data-state": r.state },
      el("td", { "data-label": "State" }, el("span", { class: waymark.stateClass(r.state), text: r.state, title: r.reason || "" })),
      el("td", { "data-label": "Run" }, el("a", { href: "/runs/" + encodeURIComponent(r.run), class: "run-link", text: r.run.slice(0, 8) })),
      el("td", { "data-label": "Workflow", text: r.workflow + (r.version ? " v" + r.version : "") }),
      el("td", { "data-label": "Cluster", text: r.cluster || "–" }),
      el("td", { "data-label": "Operator", text: r.operator }),
      el("td", { "data-label": "Started", text: waymark.time(r.started_at) }),
      el("td", { "data-label": "Duration", text: waymark.duration(r.finished || !r.started_at ? r.duration_s : (Date.now() - Date.parse(r.started_at)) / 1000) }),
    )));
    f("empty").hidden = shown.length > 0;
  }

  async function load() {
    try {
      const data = await waymark.getJson("/web/api/runs");
      const sel = f("f-state");
      if (sel.options.length === 1) {
        for (const s of data.states) sel.append(el("option", { value: s, text: s }));
      }
      rows = data.runs;
      waymark.showError("");
      render();
    } catch (e) {
      waymark.showError("Cannot load the runs: " + e.message);
    }
  }

  f("filters").addEventListener("input", render);
  f("filters").addEventListener("submit", (e) => e.preventDefault());
  load();
  // A tab in the background asks nothing; it catches up when shown again.
  setInterval(() => { if (!document.hidden) load(); }, 3000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) load(); });
})();

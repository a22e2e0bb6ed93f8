// Helpers shared by the web UI's pages. Everything from the daemon is put into the page as
// text (textContent), never as HTML.
"use strict";

const waymark = {
  csrf() {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  },

  async getJson(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || (r.status + " " + r.statusText));
    return body;
  },

  async postJson(path, value) {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": waymark.csrf() },
      body: JSON.stringify(value),
    });
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || (r.status + " " + r.statusText));
    return body;
  },

  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  },

  duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(r).padStart(2, "0") + "s";
    return (seconds < 10 ? seconds.toFixed(1) : r) + "s";
  },

  time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  },

  stateClass(state) {
    return "badge s-" + String(state || "unknown").replace(/[^a-z-]/g, "");
  },

  showError(text) {
    const e = document.getElementById("error");
    if (!e) return;
    e.hidden = !text;
    e.textContent = text || "";
  },
};

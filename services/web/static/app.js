// kernelmap dashboard: the few things pages do in the browser (no framework, no CDN).
// Elements opt in with data attributes; every text set here goes through textContent.
"use strict";

// [data-poll="URL"]: fetch URL (JSON) every few seconds while the page is visible and fill
// every [data-field="name"] inside with that field; <progress data-bar="name"> takes a 0..1
// field. Polling stops once the JSON says "live": false.
function pollBlock(block) {
  const url = block.dataset.poll;
  const every = Number(block.dataset.every || 2000);
  async function tick() {
    if (document.hidden) { setTimeout(tick, every); return; }
    let data;
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401 || r.redirected) { window.location.reload(); return; }
      if (!r.ok) { setTimeout(tick, every * 2); return; }
      data = await r.json();
    } catch (e) { setTimeout(tick, every * 2); return; }
    fill(block, data);
    if (data.live !== false) setTimeout(tick, every);
    // A run that just ended: reload once for its final map and curves (the new page polls
    // no more, its run being over).
    else if (block.dataset.reloadOnEnd) window.location.reload();
  }
  setTimeout(tick, every);
}

function fill(root, data) {
  root.querySelectorAll("[data-field]").forEach((el) => {
    const path = el.dataset.field.split(".");
    let v = data;
    for (const k of path) v = v == null ? undefined : v[k];
    if (v !== undefined) el.textContent = v === null ? "n/a" : String(v);
  });
  root.querySelectorAll("progress[data-bar]").forEach((el) => {
    const v = Number(data[el.dataset.bar]);
    if (!Number.isNaN(v)) el.value = Math.max(0, Math.min(1, v));
  });
  if (data.rows && root.dataset.rows) {
    for (const row of data.rows) {
      const tr = root.querySelector(`[data-row="${CSS.escape(String(row.id))}"]`);
      if (tr) fill(tr, row);
    }
  }
}

document.querySelectorAll("[data-poll]").forEach(pollBlock);

// form[data-autosubmit]: changing one of its selects submits it (the run page's choice of a
// slice of the map's third dimension: the server renders that slice).
document.querySelectorAll("form[data-autosubmit]").forEach((form) => {
  form.querySelectorAll("select").forEach((sel) => {
    sel.addEventListener("change", () => form.submit());
  });
});

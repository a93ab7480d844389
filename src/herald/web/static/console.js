// Herald console: live broadcast progress over Server-Sent Events (no framework).
"use strict";
(function () {
  const panel = document.getElementById("progress");
  if (!panel || !panel.dataset.live || !window.EventSource) return;
  const field = (name) => panel.querySelector(`[data-field="${name}"]`);
  const source = new EventSource(panel.dataset.progressUrl);
  source.addEventListener("progress", (event) => {
    const p = JSON.parse(event.data);
    const state = document.createElement("span");
    state.className = `state s-${p.state}`;
    state.textContent = p.state;
    field("state").replaceChildren(state);
    for (const name of ["planned", "recipients_created", "routed"]) field(name).textContent = String(p[name]);
    const bar = field("bar");
    bar.max = Math.max(1, p.planned);
    bar.value = p.routed;
    bar.textContent = `${p.routed} / ${p.planned}`;
    const list = field("deliveries");
    list.replaceChildren(...Object.entries(p.deliveries).map(([name, count]) => {
      const item = document.createElement("li");
      item.className = "chip";
      const badge = document.createElement("span");
      badge.className = `state s-${name}`;
      badge.textContent = name;
      item.append(badge, ` ${count}`);
      return item;
    }));
    if (p.final) {
      field("live").textContent = "Final.";
      source.close();
    }
  });
})();

// Herald console: live broadcast and workflow run progress over Server-Sent Events (no
// framework).
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
(function () {
  const panel = document.getElementById("run");
  if (!panel || !panel.dataset.live || !window.EventSource) return;
  const field = (name) => panel.querySelector(`[data-field="${name}"]`);
  const badge = (value) => {
    const span = document.createElement("span");
    span.className = `state s-${value}`;
    span.textContent = value;
    return span;
  };
  const cell = (...children) => {
    const td = document.createElement("td");
    td.append(...children);
    return td;
  };
  const source = new EventSource(panel.dataset.progressUrl);
  source.addEventListener("progress", (event) => {
    const run = JSON.parse(event.data);
    field("status").replaceChildren(badge(run.status));
    field("waiting_for").textContent = run.waiting_for || "—";
    field("steps").replaceChildren(...run.steps.map((step) => {
      const row = document.createElement("tr");
      row.dataset.step = step.id;
      let sent = "—";
      if (step.notification_id) {
        sent = document.createElement("a");
        sent.href = `/console/notifications/${encodeURIComponent(step.notification_id)}`;
        sent.textContent = step.notification_id;
      }
      const at = step.at ? step.at.slice(0, 19).replace("T", " ") : "—";
      row.append(cell(step.id), cell(step.type), cell(badge(step.status)), cell(sent), cell(at));
      return row;
    }));
    if (run.final) {
      field("live").textContent = "Final.";
      source.close();
    }
  });
})();

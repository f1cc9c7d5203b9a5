"use strict";
// fitsflow status page: draws /api/status every 2 s. Read-only; no framework.
const NODES = {
  camera: [80, 60, "camera"], receiver: [265, 60, "receiver"], "header-service": [265, 200, "header service"],
  forwarder: [480, 130, "forwarder"], "archive-controller": [720, 130, "archive controller"],
  oods: [885, 45, "OODS ingest"], "archive-ingest": [885, 215, "archive ingest"],
  "panic-mailer": [480, 285, "panic mailer"], recorder: [720, 285, "recorder"],
};
// [from, to, label, message types, destination filter]
const EDGES = [
  ["camera", "receiver", "events", ["START_INTEGRATION", "END_READOUT"]],
  ["camera", "header-service", "telemetry", ["TELEMETRY", "END_OF_IMAGE_TELEMETRY"]],
  ["receiver", "forwarder", "readout", ["READOUT_COMPLETE"]],
  ["header-service", "forwarder", "header", ["HEADER_READY"]],
  ["archive-controller", "forwarder", "assign", ["FORWARD_IMAGE"]],
  ["forwarder", "archive-controller", "delivered", ["FILE_DELIVERED"]],
  ["archive-controller", "oods", "ingest", ["INGEST_REQUEST"], "oods"],
  ["archive-controller", "archive-ingest", "ingest", ["INGEST_REQUEST"], "archive"],
];
// A daemon heard of recently but in ALARM or FAULT is not "up" on the diagram.
const STATE_CLASS = {ALARM: "late", FAULT: "down", OFF: "down"};
const W = 140, H = 40;

function el(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function availability(daemons, kind) {
  const mine = daemons.filter(d => d.daemon.split("@")[0] === kind);
  if (!mine.length) return ["none", "not seen"];
  const shown = d => d.availability === "up" ? (STATE_CLASS[d.state] || "up") : d.availability;
  const up = mine.filter(d => shown(d) === "up").length;
  const late = mine.filter(d => shown(d) === "late").length;
  const cls = up === mine.length ? "up" : (up + late > 0 ? "late" : "down");
  const alarms = mine.filter(d => d.state === "ALARM" || d.state === "FAULT").map(d => d.state);
  return [cls, `${up}/${mine.length} up` + (alarms.length ? ` · ${alarms[0]}` : "")];
}

function drawDiagram(s) {
  const svg = document.getElementById("diagram");
  svg.replaceChildren();
  const defs = el("defs");
  const marker = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto"});
  marker.appendChild(el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#667"}));
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const [from, to, label, types, dest] of EDGES) {
    const [x1, y1] = NODES[from], [x2, y2] = NODES[to];
    const n = s.flows.filter(f => types.includes(f.type) && (!dest || f.destination.includes("." + dest + ".")))
                     .reduce((a, f) => a + f.count, 0);
    const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy);
    const sx = x1 + dx / len * (W / 2), sy = y1 + dy / len * (H / 2), ex = x2 - dx / len * (W / 2), ey = y2 - dy / len * (H / 2);
    const off = (from === "forwarder" && to === "archive-controller") ? 10 : (from === "archive-controller" && to === "forwarder" ? -10 : 0);
    const below = off > 0 ? 16 : -4;
    svg.appendChild(el("line", {x1: sx, y1: sy + off, x2: ex, y2: ey + off, class: "edge" + (n ? " busy" : "")}));
    svg.appendChild(el("text", {x: (sx + ex) / 2, y: (sy + ey) / 2 + off + below, class: "label", "text-anchor": "middle"},
                       `${label}: ${n}`));
  }
  for (const [kind, [x, y, label]] of Object.entries(NODES)) {
    const [cls, what] = kind === "camera" ? [s.flows.some(f => f.type === "START_INTEGRATION") ? "up" : "none", "events"]
                                          : availability(s.daemons, kind);
    const g = el("g", {class: "node " + cls});
    g.appendChild(el("rect", {x: x - W / 2, y: y - H / 2, width: W, height: H}));
    g.appendChild(el("text", {x: x, y: y - 3}, label));
    g.appendChild(el("text", {x: x, y: y + 13, "font-size": "11"}, what));
    svg.appendChild(g);
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    if (text instanceof Node) td.appendChild(text); else td.textContent = text ?? "";
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function bar(n, of) {
  const span = document.createElement("span");
  const b = document.createElement("span");
  b.className = "bar";
  b.style.width = (of ? Math.round(60 * n / of) : 0) + "px";
  span.append(b, ` ${n}/${of ?? "?"}`);
  return span;
}

function draw(s) {
  document.getElementById("updated").textContent =
    `updated ${new Date(s.time).toLocaleTimeString()} · ${s.recorded} messages recorded`;
  document.getElementById("window").textContent = Math.round(s.flow_window_s / 60);
  drawDiagram(s);
  document.querySelector("#daemons tbody").replaceChildren(...s.daemons.map(d => row([
    [d.daemon], [d.host], [d.availability, d.availability], [d.state], [d.target], [`${d.last_seen_s} s ago`],
    [d.status, "status"]])));
  document.querySelector("#images tbody").replaceChildren(...s.images.map(i => row([
    [i.image], [i.stage], [i.sensors], [bar(i.n_delivered, i.sensors)], [bar(i.n_in_OODS, i.sensors)],
    [bar(i.n_in_archive, i.sensors)], [bar(i.n_in_Rucio, i.sensors)], [i.readout_to_oods_s === null ? "" : `${i.readout_to_oods_s.toFixed(2)} s`],
    [[i.missing ? `${i.missing} missing` : "", i.header_partial ? "partial header" : "",
      i.failed ? `${i.failed} failed` : ""].filter(Boolean).join(", ")]])));
  document.getElementById("events").replaceChildren(...s.events.map(e => {
    const li = document.createElement("li");
    li.className = e.type;
    li.textContent = `${new Date(e.time).toLocaleTimeString()} ${e.type} ${e.severity} ${e.sender}: ${e.message}`;
    return li;
  }));
}

async function refresh() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    draw(await r.json());
  } catch (e) {
    document.getElementById("updated").textContent = `no data: ${e.message}`;
  }
}
refresh();
setInterval(refresh, 2000);

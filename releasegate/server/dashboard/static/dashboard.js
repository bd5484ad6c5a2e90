// releasegate dashboard: confirmations, local times, live updates (server-sent events) and the uPlot charts.
// Plain DOM with textContent only (never innerHTML): every value shown comes from the server and stays text.
"use strict";

function localTimes(root) {
  for (const t of root.querySelectorAll("time[data-at]")) {
    const at = parseFloat(t.dataset.at);
    if (!isNaN(at)) { t.textContent = new Date(at * 1000).toLocaleString(); t.dateTime = new Date(at * 1000).toISOString(); }
  }
}

function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => { if (!window.confirm(form.dataset.confirm)) ev.preventDefault(); });
  }
}

function cell(tag, text, attrs) {
  const el = document.createElement(tag);
  if (text !== undefined && text !== null) el.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function link(href, text) { return cell("a", text, { href: href }); }

function live(url, onUpdate) {
  const badge = document.getElementById("live");
  const source = new EventSource(url);
  source.onopen = () => { badge.textContent = "on"; };
  source.onerror = () => { badge.textContent = "reconnecting"; };
  source.addEventListener("update", (ev) => onUpdate(JSON.parse(ev.data)));
  source.addEventListener("signed-out", () => { source.close(); window.location.assign("/signin"); });
}

// --- overview ------------------------------------------------------------------------------------------------
function renderRows(rows) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = cell("tr", null, { "data-service": r.service, "data-env": r.env });
    if (r.attention) tr.className = "attention";
    else if (!r.live) tr.className = "superseded";
    const name = cell("th", r.service, { scope: "row" });
    if (r.release !== r.service) name.append(" ", cell("small", `(${r.release})`));
    const current = r.current || (!r.live && r.last_version ? "last " + r.last_version : "—");
    tr.append(name, cell("td", r.env || "—"), cell("td", r.state), cell("td", current), cell("td", r.running));
    const ro = cell("td");
    if (r.rollout) ro.append(link("/rollouts/" + r.rollout.id, `${r.rollout.version}: ${r.rollout.strategy} step ${r.rollout.step + 1}, ${r.rollout.weight}%`));
    else ro.textContent = "—";
    const last = cell("td");
    if (r.last) { last.append(link("/rollouts/" + r.last.id, `${r.last.version} ${r.last.status}`), " ", cell("time", null, { "data-at": r.last.finished_at || "" })); }
    else last.textContent = "—";
    tr.append(ro, last, cell("td", r.attention || ""));
    body.append(tr);
  }
  localTimes(body);
}

// --- rollout page --------------------------------------------------------------------------------------------
const plots = {};

function chartOptions(c, width) {
  const series = [{}];
  if (c.series) {
    const colours = ["#1f5fbf", "#b3261e", "#1b7f3b", "#8a5a00"];
    Object.keys(c.series).forEach((v, i) => series.push({ label: v, stroke: colours[i % colours.length], width: 2 }));
  } else {
    series.push({ label: "new version", stroke: "#1f5fbf", width: 2 });
    if (c.max !== null) series.push({ label: "max " + c.max, stroke: "#b3261e", dash: [6, 4], width: 1.5 });
    if (c.min !== null) series.push({ label: "min " + c.min, stroke: "#8a5a00", dash: [6, 4], width: 1.5 });
  }
  return { width: width, height: 220, series: series, scales: { x: { time: true } }, legend: { live: false } };
}

function chartData(c) {
  if (c.series) return [c.x, ...Object.values(c.series)];
  const data = [c.x, c.y];
  if (c.max !== null) data.push(c.x.map(() => c.max));
  if (c.min !== null) data.push(c.x.map(() => c.min));
  return data;
}

function renderCharts(charts) {
  const holder = document.getElementById("charts");
  for (const c of charts) {
    let box = document.getElementById("chart-" + c.key);
    if (!box) {
      box = cell("figure", null, { id: "chart-" + c.key, class: "chart", "data-points": "0" });
      box.append(cell("h3", c.title), cell("p", "", { class: "latest" }));
      holder.append(box);
    }
    if (plots[c.key]) plots[c.key].setData(chartData(c));
    else plots[c.key] = new uPlot(chartOptions(c, chartWidth()), chartData(c), box);
    const y = (c.y || []).filter((v) => v !== null);
    box.dataset.points = String(c.series ? c.x.length : y.length);  // analyses with data
    const last = c.y && c.y.length ? c.y[c.y.length - 1] : undefined;
    box.querySelector(".latest").textContent = last === undefined ? "no analysis yet"
      : last === null ? "latest analysis: no data (no traffic to the new version)" : `latest: ${last}`;
  }
}

function chartWidth() {
  const holder = document.getElementById("charts");
  return Math.max(260, Math.min(holder.clientWidth || 600, 720));
}

window.addEventListener("resize", () => {
  for (const plot of Object.values(plots)) plot.setSize({ width: chartWidth(), height: 220 });
});

function renderRollout(view) {
  if (view.error) return;
  const st = view.state;
  document.getElementById("status").textContent = st.status;
  document.getElementById("phase").textContent = st.phase;
  document.getElementById("weight").textContent = st.weight + "%";
  document.getElementById("reported").textContent = view.reported || "—";
  const instances = document.querySelector("#instances tbody");
  if (instances) {
    instances.replaceChildren(...(view.instances || []).map((i) => {
      const tr = cell("tr");
      tr.append(cell("td", i.version), cell("td", i.address), cell("td", i.weight + "%"), cell("td", i.health));
      return tr;
    }));
  }
  document.getElementById("waiting").textContent = st.paused || st.waiting || st.reason || "—";
  renderJudge(view.judge);
  const timeline = document.getElementById("timeline");
  timeline.replaceChildren(...view.timeline.map((s) => {
    const li = cell("li", `step ${s.n}: ${s.weight}% `, { class: s.state });
    li.append(cell("span", s.state));
    return li;
  }));
  const actions = document.getElementById("actions");
  if (actions) actions.hidden = !st.active;
  const body = document.querySelector("#decisions tbody");
  body.replaceChildren(...view.decisions.map((d) => {
    const tr = cell("tr");
    tr.append(cell("td").appendChild(cell("time", null, { "data-at": d.at })).parentNode, cell("td", d.kind),
              cell("td", d.message), cell("td", Object.entries(d.values).map(([k, v]) => `${k}=${v}`).join(" ")));
    return tr;
  }));
  localTimes(body);
  renderCharts(view.charts);
}

// The judge's figures at a judged step (the same rows as `releasegate status`); hidden elsewhere.
function renderJudge(judge) {
  const section = document.getElementById("judge");
  if (!section) return;
  section.hidden = !judge;
  if (!judge) return;
  document.getElementById("judge-said").textContent = judge.said;
  const head = cell("tr");
  head.append(...judge.columns.map((c) => cell("th", c, { scope: "col" })));
  document.querySelector("#judge-table thead").replaceChildren(head);
  document.querySelector("#judge-table tbody").replaceChildren(...judge.rows.map((row) => {
    const tr = cell("tr");
    tr.append(...row.map((c) => cell("td", c)));
    return tr;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  confirmations();
  const table = document.getElementById("services");
  if (table) live(table.dataset.live, (data) => renderRows(data.rows));
  const holder = document.getElementById("view");
  if (holder) {
    renderRollout(JSON.parse(holder.textContent));
    live(holder.dataset.live, renderRollout);
  }
});

// `/`: the fleet at a glance — nodes by state, GPUs, free VRAM, jobs in
// the last hour, open alerts and the latest events.

import { h, put, link } from "../dom.js";
import { get } from "../api.js";
import { mib, number } from "../format.js";
import { alertsTable, eventsTable, mergeAlert } from "./parts.js";

const JOB_ENDS = new Set(["job.completed", "job.failed", "job.dead_lettered", "job.cancelled"]);
const RECENT = 15;

function card(label, value, detail, href) {
  return h("div", { class: "card" },
    h("div", { class: "value" }, href ? link(href, value) : value),
    h("div", { class: "label" }, label),
    detail ? h("div", { class: "muted" }, detail) : null);
}

function counts(nodes) {
  const by = { up: 0, late: 0, down: 0, offline: 0 };
  let gpus = 0;
  let busy = 0;
  let free = 0;
  for (const node of nodes.values()) {
    by[node.stale ? "offline" : node.state] = (by[node.stale ? "offline" : node.state] || 0) + 1;
    if (node.state !== "up") continue;
    gpus += node.gpus.length;
    busy += node.gpus.filter((gpu) => (gpu.utilizationPercent ?? 0) >= 5).length;
    free += node.freeVramMb;
  }
  return { by, gpus, busy, free };
}

function draw(state) {
  const { by, gpus, busy, free } = counts(state.nodes);
  const hour = state.summary.lastHour;
  const open = state.alerts.filter((alert) => alert.status === "OPEN");
  put(state.root,
    h("h1", {}, "Fleet overview"),
    h("section", { class: "cards", "aria-label": "Fleet numbers" },
      card("nodes up", String(by.up), null, "/nodes?state=up"),
      card("late", String(by.late), null, "/nodes?state=late"),
      card("down", String(by.down), null, "/nodes?state=down"),
      card("offline", String(by.offline), null, "/nodes?state=offline"),
      card("GPUs busy", `${busy} / ${gpus}`, "of the GPUs of up nodes"),
      card("free VRAM", mib(free), "on up nodes"),
      card("jobs / s, last hour", number(hour.jobsPerSecond, 2), `${hour.runs} runs`, "/jobs"),
      card("failures, last hour", String(hour.failures), null, "/jobs"),
      card("open alerts", String(open.length), null, "/alerts")),
    h("h2", {}, "Open alerts"),
    alertsTable(open.slice(0, 20)),
    h("h2", {}, "Latest events"),
    eventsTable(state.events));
}

export default {
  name: "overview",
  title: () => "Overview",
  async load() {
    const [summary, nodes, alerts, events] = await Promise.all([
      get("/v1/status/summary"),
      get("/v1/nodes?stale=true"),
      get("/v1/alerts?status=OPEN&limit=100"),
      get(`/v1/events?limit=${RECENT}`),
    ]);
    return {
      summary,
      nodes: new Map(nodes.nodes.map((node) => [node.id, node])),
      alerts: alerts.alerts,
      events: events.events,
      refetching: null,
    };
  },
  render(state) {
    state.root = h("div", {});
    draw(state);
    return state.root;
  },
  update(state, batch) {
    let jobsEnded = false;
    for (const { kind, data } of batch) {
      if (kind === "node") state.nodes.set(data.id, data);
      else if (kind === "alert") mergeAlert(state.alerts, data.alert);
      else if (kind === "event") {
        state.events.unshift(data);
        if (JOB_ENDS.has(data.eventType)) jobsEnded = true;
      }
    }
    state.events.length = Math.min(state.events.length, RECENT);
    draw(state);
    // The hour's job numbers are the store's: asked again when jobs end,
    // at most every 5 s (never while nothing happens).
    if (jobsEnded && !state.refetching) {
      state.refetching = setTimeout(async () => {
        try {
          state.summary = await get("/v1/status/summary");
          draw(state);
        } finally {
          state.refetching = null;
        }
      }, 5000);
    }
  },
};

// `/nodes/{id}`: one node — its numbers over the last hour or day (from
// the monitor's per-minute rollups), its GPUs now, services with their
// placement and health, the processes it manages with their cgroup's
// CPU, memory and I/O, its handlers, and its recent jobs, events and
// alerts. Live: its new state and numbers, its events and alerts.

import { h, put, badge, table } from "../dom.js";
import { get } from "../api.js";
import { ago, celsius, duration, mib, percent, watts, when } from "../format.js";
import { lineChart } from "../chart.js";
import { alertsTable, eventsTable, gpuChip, mergeAlert } from "./parts.js";

const RANGES = { "15m": 900_000, hour: 3_600_000, day: 86_400_000 };
const EVENTS = 50;

function bytes(value) {
  return value === undefined || value === null ? "–" : mib(value / 1048576);
}

function rate(value) {
  return value === undefined || value === null ? "–" : `${bytes(value)}/s`;
}

function charts(state) {
  const to = Date.now();
  const from = to - RANGES[state.range];
  const history = state.history;
  const indexes = [...new Set(history.flatMap((minute) => minute.gpus.map((gpu) => gpu.index)))].sort((a, b) => a - b);
  const gpuSeries = (field) => indexes.map((index) => ({
    label: `GPU ${index}`,
    points: history.map((minute) => [minute.minuteMs, minute.gpus.find((gpu) => gpu.index === index)?.[field] ?? null]),
  }));
  const one = (label, field) => [{ label, points: history.map((minute) => [minute.minuteMs, minute[field]]) }];
  const list = [
    lineChart({ title: "CPU busy (%)", series: one("CPU", "cpuPercent"), from, to, format: percent, max: 100 }),
    lineChart({ title: "Memory used (%)", series: one("memory", "memoryPercent"), from, to, format: percent, max: 100 }),
  ];
  if (indexes.length) {
    list.push(
      lineChart({ title: "GPU busy (%)", series: gpuSeries("utilizationPercent"), from, to, format: percent, max: 100 }),
      lineChart({ title: "GPU temperature (°C)", series: gpuSeries("temperatureCelsius"), from, to, format: celsius }),
      lineChart({ title: "GPU memory used (MiB, GiB)", series: gpuSeries("memoryUsedMb"), from, to, format: mib }),
      lineChart({ title: "GPU power (W)", series: gpuSeries("powerWatts"), from, to, format: watts }));
  }
  return h("div", { class: "charts" }, list);
}

function gpusNow(node, ctx) {
  if (!node.gpus.length) return h("p", { class: "muted" }, "No GPUs reported.");
  return table([{ label: "GPU" }, { label: "Model" }, { label: "Busy" }, { label: "Memory" }, { label: "Temperature" }, { label: "Power" }],
    node.gpus.map((gpu) => h("tr", { dataset: { gpu: String(gpu.index) } },
      h("td", {}, gpuChip(gpu, ctx.settings)),
      h("td", {}, gpu.name, h("div", { class: "muted mono" }, gpu.uuid)),
      h("td", {}, percent(gpu.utilizationPercent)),
      h("td", {}, `${mib(gpu.memoryUsedMb)} of ${mib(gpu.memoryTotalMb)}`),
      h("td", {}, celsius(gpu.temperatureCelsius)),
      h("td", {}, watts(gpu.powerWatts)))));
}

function services(status) {
  const list = status?.services ?? [];
  if (!list.length) return h("p", { class: "muted" }, "No services.");
  return table([{ label: "Service" }, { label: "Type" }, { label: "Status" }, { label: "Health" }, { label: "Placement" },
    { label: "Models" }, { label: "Restarts", class: "hide-narrow" }],
  list.map((service) => h("tr", {},
    h("td", {}, service.name, service.port ? h("div", { class: "muted" }, `port ${service.port}`) : null),
    h("td", {}, service.type),
    h("td", {}, badge(service.status)),
    h("td", {}, badge(service.health), service.warning ? h("div", { class: "muted" }, service.warning) : null),
    h("td", { class: "mono" }, service.placement || "–"),
    h("td", {}, (service.models || []).join(", ") || "–"),
    h("td", { class: "hide-narrow" }, String(service.restarts ?? 0), service.last_exit ? h("div", { class: "muted" }, service.last_exit) : null))));
}

function processes(status) {
  const list = status?.processes ?? [];
  if (!list.length) return h("p", { class: "muted" }, "No managed processes.");
  return table([{ label: "Process" }, { label: "PID" }, { label: "cgroup" }, { label: "CPU" }, { label: "Memory" },
    { label: "Read" }, { label: "Write" }, { label: "Up", class: "hide-narrow" }],
  list.map((process) => h("tr", {},
    h("td", {}, process.name, process.model ? h("div", { class: "muted" }, process.model) : null),
    h("td", {}, String(process.pid ?? "–")),
    h("td", { class: "mono" }, process.cgroup?.path ?? "–"),
    h("td", {}, percent(process.cgroup?.cpu_percent)),
    h("td", {}, process.cgroup
      ? `${bytes(process.cgroup.memory_bytes)}${process.cgroup.memory_limit_bytes ? ` of ${bytes(process.cgroup.memory_limit_bytes)}` : ""}`
      : mib(process.rss_mb)),
    h("td", {}, rate(process.cgroup?.io_read_bytes_per_s)),
    h("td", {}, rate(process.cgroup?.io_write_bytes_per_s)),
    h("td", { class: "hide-narrow" }, process.uptime_seconds != null ? duration(process.uptime_seconds * 1000) : "–"))));
}

function handlers(status) {
  const list = status?.handlers ?? [];
  if (!list.length) return h("p", { class: "muted" }, "No handlers.");
  return table([{ label: "Job type" }, { label: "Digest" }, { label: "Source" }, { label: "Refused" }],
    list.map((handler) => h("tr", {},
      h("td", {}, handler.job_type),
      h("td", { class: "mono" }, handler.digest ? handler.digest.slice(0, 19) : "built in"),
      h("td", {}, handler.source),
      h("td", {}, handler.refused ? `${handler.refused.digest.slice(0, 19)}: ${handler.refused.reason}` : "–"))));
}

function header(node) {
  return h("div", {},
    h("h1", {}, node.name, " ", badge(node.stale ? "offline" : node.state)),
    h("p", { class: "muted" },
      `id ${node.id} · ${node.mode || "unknown mode"} · last heard ${ago(node.lastSeenMs)} (${when(node.lastSeenMs)}) · `,
      `${node.inFlight} jobs in flight · beats every ${duration(node.heartbeatIntervalMs)}`,
      node.tags.length ? " · " : "", node.tags.map((tag) => h("span", { class: "tag" }, tag))));
}

function draw(state, ctx) {
  const recentJobs = state.events.filter((event) => event.eventType.startsWith("job."));
  const range = (name, label) => (state.range === name
    ? h("strong", { "aria-current": "true" }, label)
    : h("a", { href: `${location.pathname}${name === "hour" ? "" : `?range=${name}`}` }, label));
  put(state.root,
    header(state.node),
    h("p", {}, "History: ", range("15m", "last 15 min"), " · ", range("hour", "last hour"), " · ", range("day", "last day")),
    charts(state),
    h("h2", {}, "GPUs now"), gpusNow(state.node, ctx),
    h("h2", {}, "Services"),
    h("p", { class: "muted" }, `Services, processes and handlers as the node reported them at ${when(Date.parse(state.status?.timestamp))}.`),
    services(state.status),
    h("h2", {}, "Managed processes"), processes(state.status),
    h("h2", {}, "Handlers"), handlers(state.status),
    h("h2", {}, "Alerts"), alertsTable(state.alerts),
    h("h2", {}, "Recent jobs"), eventsTable(recentJobs.slice(0, 20)),
    h("h2", {}, "Recent events"), eventsTable(state.events));
}

export default {
  name: "node",
  title: (state) => state.node.name,
  async load(ctx) {
    const range = Object.hasOwn(RANGES, ctx.query.get("range") ?? "") ? ctx.query.get("range") : "hour";
    const from = Date.now() - RANGES[range];
    const answer = await get(`/v1/nodes/${encodeURIComponent(ctx.param)}?from=${from}`);
    return { range, ...answer, root: null };
  },
  render(state, ctx) {
    state.root = h("div", {});
    draw(state, ctx);
    return state.root;
  },
  update(state, batch, ctx) {
    let changed = false;
    for (const { kind, data } of batch) {
      if (kind === "node" && data.id === state.node.id) {
        state.node = data;
        changed = true;
      } else if (kind === "event" && data.node === state.node.id) {
        state.events.unshift(data);
        state.events.length = Math.min(state.events.length, EVENTS);
        changed = true;
      } else if (kind === "alert" && data.alert.node === state.node.id) {
        mergeAlert(state.alerts, data.alert);
        changed = true;
      }
    }
    if (changed) draw(state, ctx);
  },
};

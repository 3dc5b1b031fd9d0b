// Pieces more than one page shows: a GPU's chip, event rows, alert rows.

import { h, badge, link, table } from "../dom.js";
import { ago, celsius, mib, percent, when } from "../format.js";
import { post } from "../api.js";

/** "hot" at the monitor's GPU_HOT threshold, "warm" within 10 °C of it. */
export function heat(temperature, settings) {
  if (temperature === undefined || temperature === null) return "";
  if (temperature >= settings.highTempCelsius) return "hot";
  if (temperature >= settings.highTempCelsius - 10) return "warm";
  return "cool";
}

/** A GPU as a small chip: busy and memory bars, edged by its temperature. */
export function gpuChip(gpu, settings) {
  const used = gpu.memoryUsedMb ?? (gpu.memoryTotalMb != null && gpu.memoryFreeMb != null ? gpu.memoryTotalMb - gpu.memoryFreeMb : null);
  const vram = gpu.memoryTotalMb ? (100 * (used ?? 0)) / gpu.memoryTotalMb : 0;
  const util = gpu.utilizationPercent ?? 0;
  const label = `GPU ${gpu.index} ${gpu.name || ""}: ${percent(gpu.utilizationPercent)} busy, ` +
    `${mib(used)} of ${mib(gpu.memoryTotalMb)} used, ${celsius(gpu.temperatureCelsius)}`;
  return h("div", {
    class: `gpu ${heat(gpu.temperatureCelsius, settings)}`, title: label, role: "img", "aria-label": label,
    dataset: { gpu: String(gpu.index) },
  },
  h("div", { class: "bar util" }, h("span", { style: { width: `${Math.min(100, util)}%` } })),
  h("div", { class: "bar vram" }, h("span", { style: { width: `${Math.min(100, vram)}%` } })),
  h("div", { class: "temp" }, celsius(gpu.temperatureCelsius)));
}

export const EVENT_COLUMNS = [
  { label: "When" }, { label: "Level" }, { label: "Type" }, { label: "Node" },
  { label: "Job type", class: "hide-narrow" }, { label: "Message" },
];

/** One event as a table row. */
export function eventRow(event) {
  return h("tr", { dataset: { id: String(event.id) } },
    h("td", { title: new Date(event.atMs).toISOString() }, when(event.atMs)),
    h("td", {}, h("span", { class: `level level-${event.level}` }, event.level)),
    h("td", { class: "mono" }, event.eventType),
    h("td", {}, event.node ? link(`/nodes/${encodeURIComponent(event.node)}`, event.node) : "–"),
    h("td", { class: "hide-narrow" }, event.jobName ? link(`/jobs/${encodeURIComponent(event.jobName)}`, event.jobName) : "–"),
    h("td", { class: "message" }, event.message));
}

/** Events as a table (newest first). */
export function eventsTable(events) {
  const rows = events.map(eventRow);
  const wrap = table(EVENT_COLUMNS, rows);
  wrap.classList.add("events");
  if (!events.length) wrap.append(h("p", { class: "muted", style: { padding: "0 .7em" } }, "No events."));
  return wrap;
}

/** Alerts as a table; open ones get a close form when `closable`. */
export function alertsTable(alerts, { closable = false, onClosed } = {}) {
  const rows = alerts.map((alert) => h("tr", { dataset: { alert: String(alert.id) } },
    h("td", {}, badge(alert.status === "OPEN" ? alert.severity : "closed")),
    h("td", { class: "mono" }, alert.alertType),
    h("td", {}, alert.node ? link(`/nodes/${encodeURIComponent(alert.node)}`, alert.node)
      : alert.jobName ? link(`/jobs/${encodeURIComponent(alert.jobName)}`, alert.jobName) : alert.subject),
    h("td", { class: "message" }, alert.message),
    h("td", { title: when(alert.openedAtMs) }, ago(alert.openedAtMs)),
    h("td", {}, alert.status === "OPEN"
      ? (closable ? closeForm(alert, onClosed) : "open")
      : `closed ${ago(alert.closedAtMs)}${alert.closeReason ? `: ${alert.closeReason}` : ""}`)));
  const wrap = table([{ label: "Severity" }, { label: "Type" }, { label: "Subject" }, { label: "Message" },
    { label: "Opened" }, { label: "Status" }], rows);
  if (!alerts.length) wrap.append(h("p", { class: "muted", style: { padding: "0 .7em" } }, "No alerts."));
  return wrap;
}

function closeForm(alert, onClosed) {
  const input = h("input", { name: "reason", required: true, maxlength: 512, placeholder: "reason", "aria-label": `Why close alert ${alert.id}` });
  const error = h("span", { class: "error", role: "alert" });
  const form = h("form", {
    class: "close-form",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const closed = await post(`/v1/alerts/${alert.id}/close`, { reason: input.value });
        if (onClosed) onClosed(closed.alert);
      } catch (failure) {
        error.textContent = failure.message;
      }
    },
  }, input, h("button", { type: "submit" }, "Close"), error);
  return form;
}

/** Merge an alert change into a list of alerts (by id). */
export function mergeAlert(list, alert) {
  const index = list.findIndex((known) => known.id === alert.id);
  if (index >= 0) list[index] = alert;
  else list.unshift(alert);
}

// `/alerts`: alerts by status, type, severity, node and job type; an
// open alert can be closed here, with a reason. Live: alerts opened,
// updated and closed while the page is open.

import { h, put } from "../dom.js";
import { get, query } from "../api.js";
import { alertsTable, mergeAlert } from "./parts.js";

const TYPES = ["", "NODE_DOWN", "GPU_HOT", "SERVICE_DOWN", "FAILURE", "MISSED", "RECOVERY", "DEAD_LETTER", "BACKLOG_STUCK"];
const FIELDS = ["status", "alertType", "severity", "node", "jobName"];

function fits(alert, filter) {
  return (!filter.status || alert.status === filter.status)
    && (!filter.alertType || alert.alertType === filter.alertType)
    && (!filter.severity || alert.severity === filter.severity)
    && (!filter.node || alert.node === filter.node)
    && (!filter.jobName || alert.jobName === filter.jobName);
}

function filterFrom(params) {
  const filter = Object.fromEntries(FIELDS.map((field) => [field, params.get(field) || ""]));
  if (!params.has("status")) filter.status = "OPEN";
  return filter;
}

async function load(filter) {
  return (await get(`/v1/alerts${query({ ...filter, limit: 200 })}`)).alerts;
}

export default {
  name: "alerts",
  title: () => "Alerts",
  async load(ctx) {
    const filter = filterFrom(ctx.query);
    return { filter, alerts: await load(filter) };
  },
  render(state, ctx) {
    const select = (id, values, value, labels = {}) =>
      h("select", { id, onchange: apply }, values.map((option) => h("option", { value: option, selected: option === value }, labels[option] || option || "any")));
    const controls = {
      status: select("filter-status", ["", "OPEN", "CLOSED"], state.filter.status, { OPEN: "open", CLOSED: "closed" }),
      alertType: select("filter-type", TYPES, state.filter.alertType),
      severity: select("filter-severity", ["", "critical", "warning", "info"], state.filter.severity),
      node: h("input", { id: "filter-node", type: "search", value: state.filter.node, onchange: apply }),
      jobName: h("input", { id: "filter-job", type: "search", value: state.filter.jobName, onchange: apply }),
    };
    state.list = h("div", {});
    state.error = h("p", { class: "error", role: "alert" });
    state.redraw = () => put(state.list, alertsTable(state.alerts, {
      closable: true,
      onClosed: (alert) => {
        mergeAlert(state.alerts, alert);
        state.alerts = state.alerts.filter((known) => fits(known, state.filter));
        state.redraw();
      },
    }));
    async function apply() {
      state.filter = Object.fromEntries(FIELDS.map((field) => [field, controls[field].value.trim()]));
      const params = new URLSearchParams();
      for (const field of FIELDS) if (state.filter[field]) params.set(field, state.filter[field]);
      if (!state.filter.status) params.set("status", "");
      ctx.setQuery(params);
      try {
        state.alerts = await load(state.filter);
        state.error.textContent = "";
      } catch (error) {
        state.error.textContent = error.message;
      }
      state.redraw();
    }
    state.redraw();
    const labelled = (text, id, control) => h("label", { for: id }, text, control);
    return h("div", {},
      h("h1", {}, "Alerts"),
      h("div", { class: "filters", role: "search" },
        labelled("Status", "filter-status", controls.status),
        labelled("Type", "filter-type", controls.alertType),
        labelled("Severity", "filter-severity", controls.severity),
        labelled("Node", "filter-node", controls.node),
        labelled("Job type", "filter-job", controls.jobName)),
      state.error,
      state.list);
  },
  update(state, batch) {
    let changed = false;
    for (const { kind, data } of batch) {
      if (kind !== "alert") continue;
      const known = state.alerts.some((alert) => alert.id === data.alert.id);
      if (fits(data.alert, state.filter)) mergeAlert(state.alerts, data.alert);
      else if (known) state.alerts = state.alerts.filter((alert) => alert.id !== data.alert.id);
      changed = true;
    }
    if (!changed) return;
    // Someone typing a reason keeps their form until they leave it.
    if (!state.list.contains(document.activeElement)) state.redraw();
    else if (!state.deferred) {
      state.deferred = true;
      state.list.addEventListener("focusout", () => {
        state.deferred = false;
        setTimeout(() => state.redraw(), 0);
      }, { once: true });
    }
  },
};

// `/jobs/{type}`: one job type — its check, the last day's numbers, its
// recent runs and alerts.

import { h, badge, put } from "../dom.js";
import { get } from "../api.js";
import { ago, duration, when } from "../format.js";
import { alertsTable, eventsTable, mergeAlert } from "./parts.js";
import { refetchSoon } from "./jobs.js";

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
}

function draw(state) {
  const check = state.check;
  const day = state.lastDay || {};
  put(state.root,
    h("h1", {}, check.jobName, " ", badge(check.state)),
    h("section", { class: "cards", "aria-label": "Job type numbers" },
      card("last run", ago(check.lastRunMs)),
      card("last success", ago(check.lastSuccessMs)),
      card("last failure", ago(check.lastFailureMs)),
      card("failure streak", String(check.consecutiveFailures ?? 0)),
      card("runs, last day", String(day.runs ?? 0)),
      card("failures, last day", String(day.failures ?? 0)),
      card("p50 duration", duration(day.p50Ms)),
      card("p95 duration", duration(day.p95Ms)),
      card("next expected", check.expectedNextMs ? when(check.expectedNextMs) : "not scheduled")),
    h("h2", {}, "Alerts"), alertsTable(state.alerts),
    h("h2", {}, "Recent runs"), eventsTable(state.recent));
}

export default {
  name: "job",
  title: (state) => state.check.jobName,
  async load(ctx) {
    const answer = await get(`/v1/status/jobs/${encodeURIComponent(ctx.param)}`);
    return { ...answer, name: ctx.param, root: null, refetching: null };
  },
  render(state) {
    state.root = h("div", {});
    draw(state);
    return state.root;
  },
  update(state, batch) {
    let changed = false;
    for (const { kind, data } of batch) {
      if (kind === "event" && data.jobName === state.name) {
        state.recent.unshift(data);
        state.recent.length = Math.min(state.recent.length, 50);
        changed = true;
        refetchSoon(state, async () => {
          const answer = await get(`/v1/status/jobs/${encodeURIComponent(state.name)}`);
          return { check: answer.check, lastDay: answer.lastDay };
        }, draw);
      } else if (kind === "alert" && data.alert.jobName === state.name) {
        mergeAlert(state.alerts, data.alert);
        changed = true;
      }
    }
    if (changed) draw(state);
  },
};

// `/jobs`: Chief's job health — each job type's check state, last run,
// failure streak, run counts and p50/p95 durations over the last day.

import { h, badge, link, put, table } from "../dom.js";
import { get } from "../api.js";
import { ago, duration, when } from "../format.js";

const JOB_EVENT = /^job\./;

function cadence(job) {
  if (job.schedule) return `cron ${job.schedule} (UTC)`;
  if (job.everyS) return `every ${duration(job.everyS * 1000)}`;
  return "failures only";
}

function draw(state) {
  const rows = state.jobs.map((job) => h("tr", { dataset: { job: job.jobName, state: job.state } },
    h("td", {}, link(`/jobs/${encodeURIComponent(job.jobName)}`, job.jobName)),
    h("td", {}, badge(job.state)),
    h("td", { class: "hide-narrow" }, cadence(job)),
    h("td", { title: when(job.lastRunMs) }, ago(job.lastRunMs)),
    h("td", {}, String(job.consecutiveFailures ?? 0)),
    h("td", {}, String(job.lastDay?.runs ?? 0)),
    h("td", {}, String(job.lastDay?.failures ?? 0)),
    h("td", {}, duration(job.lastDay?.p50Ms)),
    h("td", {}, duration(job.lastDay?.p95Ms))));
  put(state.root,
    h("h1", {}, "Job types"),
    table([{ label: "Job type" }, { label: "Check" }, { label: "Cadence", class: "hide-narrow" }, { label: "Last run" },
      { label: "Failure streak" }, { label: "Runs (day)" }, { label: "Failures (day)" }, { label: "p50" }, { label: "p95" }], rows),
    state.jobs.length ? null : h("p", { class: "muted" }, "No job type has run or is checked yet."));
}

/** Ask the store again when jobs end, at most every 2 s. */
export function refetchSoon(state, load, draw) {
  if (state.refetching) return;
  state.refetching = setTimeout(async () => {
    try {
      Object.assign(state, await load());
      draw(state);
    } finally {
      state.refetching = null;
    }
  }, 2000);
}

const load = async () => ({ jobs: (await get("/v1/status/jobs")).jobs });

export default {
  name: "jobs",
  title: () => "Jobs",
  async load() {
    return { ...(await load()), root: null, refetching: null };
  },
  render(state) {
    state.root = h("div", {});
    draw(state);
    return state.root;
  },
  update(state, batch) {
    const relevant = batch.some(({ kind, data }) => (kind === "event" && JOB_EVENT.test(data.eventType)) || (kind === "alert" && data.alert.jobName));
    if (relevant) refetchSoon(state, load, draw);
  },
};

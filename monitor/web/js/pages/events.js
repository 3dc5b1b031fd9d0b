// `/events`: the event log by type, level, node, job type and tenant,
// with a live tail that can be paused (what arrives meanwhile waits,
// counted, and is shown on resume).

import { h, table } from "../dom.js";
import { get, query } from "../api.js";
import { EVENT_COLUMNS, eventRow } from "./parts.js";

const FIELDS = ["eventType", "level", "node", "jobName", "tenant"];
const KEEP = 500;

function fits(event, filter) {
  return FIELDS.every((field) => !filter[field] || event[field] === filter[field]);
}

async function load(filter) {
  return (await get(`/v1/events${query({ ...filter, limit: 100 })}`)).events;
}

/** Put `events` (newest first) at the top. */
function show(state, events) {
  state.tbody.prepend(...events.map(eventRow));
  while (state.tbody.childElementCount > KEEP) state.tbody.lastElementChild.remove();
  state.empty.hidden = state.tbody.childElementCount > 0;
}

export default {
  name: "events",
  title: () => "Events",
  async load(ctx) {
    const filter = Object.fromEntries(FIELDS.map((field) => [field, ctx.query.get(field) || ""]));
    return { filter, events: await load(filter), paused: false, waiting: [] };
  },
  render(state, ctx) {
    const input = (id, field) => h("input", { id, type: "search", value: state.filter[field], onchange: apply });
    const controls = {
      eventType: input("filter-event-type", "eventType"),
      level: h("select", { id: "filter-level", onchange: apply },
        ["", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"].map((level) => h("option", { value: level, selected: level === state.filter.level }, level || "any"))),
      node: input("filter-node", "node"),
      jobName: input("filter-job", "jobName"),
      tenant: input("filter-tenant", "tenant"),
    };
    state.tbody = h("tbody", {});
    state.empty = h("p", { class: "muted" }, "No events match.");
    state.error = h("p", { class: "error", role: "alert" });
    const wrap = table(EVENT_COLUMNS, []);
    wrap.classList.add("events");
    wrap.querySelector("tbody").replaceWith(state.tbody);
    state.pause = h("button", { type: "button", id: "tail-pause", "aria-pressed": "false", onclick: toggle }, "Pause");
    state.waitingNote = h("span", { class: "muted", role: "status" });
    function toggle() {
      state.paused = !state.paused;
      state.pause.textContent = state.paused ? "Resume" : "Pause";
      state.pause.setAttribute("aria-pressed", String(state.paused));
      if (!state.paused) {
        show(state, state.waiting.reverse());
        state.waiting = [];
      }
      state.waitingNote.textContent = state.paused ? "paused: new events wait" : "";
    }
    async function apply() {
      state.filter = Object.fromEntries(FIELDS.map((field) => [field, controls[field].value.trim()]));
      const params = new URLSearchParams();
      for (const field of FIELDS) if (state.filter[field]) params.set(field, state.filter[field]);
      ctx.setQuery(params);
      try {
        const events = await load(state.filter);
        state.tbody.replaceChildren();
        state.waiting = [];
        show(state, events);
        state.error.textContent = "";
      } catch (error) {
        state.error.textContent = error.message;
      }
    }
    show(state, state.events);
    const labelled = (text, id, control) => h("label", { for: id }, text, control);
    return h("div", {},
      h("h1", {}, "Events"),
      h("div", { class: "filters", role: "search" },
        labelled("Type", "filter-event-type", controls.eventType),
        labelled("Level", "filter-level", controls.level),
        labelled("Node", "filter-node", controls.node),
        labelled("Job type", "filter-job", controls.jobName),
        labelled("Tenant", "filter-tenant", controls.tenant)),
      state.error,
      h("div", { class: "tail-bar" }, state.pause, state.waitingNote),
      wrap, state.empty);
  },
  update(state, batch) {
    const fresh = batch.filter(({ kind, data }) => kind === "event" && fits(data, state.filter)).map(({ data }) => data);
    if (!fresh.length) return;
    if (state.paused) {
      state.waiting.push(...fresh);
      state.waitingNote.textContent = `paused: ${state.waiting.length} new events wait`;
      return;
    }
    show(state, fresh.reverse());
  },
};

// `/nodes`: one row per node — state, tags, mode, each GPU as a chip,
// services, jobs in flight — filtered by state, tag or model and sorted
// by any column. Live changes replace only the rows of the nodes that
// changed, so a thousand-node fleet stays cheap to watch.

import { h, badge, link, table } from "../dom.js";
import { get } from "../api.js";
import { ago, mib } from "../format.js";
import { gpuChip } from "./parts.js";

const STATES = ["", "up", "late", "down", "offline"];
const RANK = { up: 0, late: 1, down: 2, offline: 3 };

const shown = (node) => (node.stale ? "offline" : node.state);

const SORTS = {
  name: (a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id),
  state: (a, b) => RANK[shown(a)] - RANK[shown(b)],
  gpus: (a, b) => a.gpus.length - b.gpus.length,
  free: (a, b) => a.freeVramMb - b.freeVramMb,
  inFlight: (a, b) => a.inFlight - b.inFlight,
  seen: (a, b) => a.lastSeenMs - b.lastSeenMs,
};

function matches(node, filter) {
  if (filter.state && shown(node) !== filter.state) return false;
  if (filter.tag && !node.tags.some((tag) => tag.toLowerCase().includes(filter.tag))) return false;
  if (filter.model) {
    const names = node.models.concat(node.gpus.map((gpu) => gpu.name));
    if (!names.some((name) => name.toLowerCase().includes(filter.model))) return false;
  }
  return true;
}

function row(node, settings) {
  const state = shown(node);
  return h("tr", { dataset: { node: node.id, state } },
    h("td", {}, link(`/nodes/${encodeURIComponent(node.id)}`, node.name),
      node.name !== node.id ? h("div", { class: "muted mono" }, node.id) : null),
    h("td", {}, badge(state)),
    h("td", { class: "hide-narrow" }, node.tags.map((tag) => h("span", { class: "tag" }, tag))),
    h("td", { class: "hide-narrow" }, node.mode || "–"),
    h("td", {}, node.gpus.length ? h("div", { class: "gpus" }, node.gpus.map((gpu) => gpuChip(gpu, settings))) : "none"),
    h("td", {}, mib(node.freeVramMb)),
    h("td", { class: "hide-narrow" }, node.services.length
      ? node.services.map((service) => h("div", {}, service.name, " ", badge(service.status === "running" ? service.health : service.status)))
      : "–"),
    h("td", {}, String(node.inFlight)),
    h("td", { class: "hide-narrow", title: new Date(node.lastSeenMs).toISOString() }, ago(node.lastSeenMs)));
}

function filterFrom(query) {
  return {
    state: query.get("state") || "",
    tag: (query.get("tag") || "").toLowerCase(),
    model: (query.get("model") || "").toLowerCase(),
  };
}

function order(state) {
  const compare = SORTS[state.sort.key];
  const direction = state.sort.descending ? -1 : 1;
  const nodes = [...state.nodes.values()].sort((a, b) => direction * compare(a, b) || SORTS.name(a, b));
  state.tbody.append(...nodes.map((node) => state.rows.get(node.id)));
}

function refilter(state) {
  let visible = 0;
  for (const node of state.nodes.values()) {
    const hidden = !matches(node, state.filter);
    state.rows.get(node.id).hidden = hidden;
    if (!hidden) visible++;
  }
  state.count.textContent = `${visible} of ${state.nodes.size} nodes`;
}

export default {
  name: "nodes",
  title: () => "Nodes",
  async load(ctx) {
    const answer = await get("/v1/nodes?stale=true");
    return {
      nodes: new Map(answer.nodes.map((node) => [node.id, node])),
      rows: new Map(),
      filter: filterFrom(ctx.query),
      sort: { key: ctx.query.get("sort") || "name", descending: ctx.query.get("desc") === "1" },
    };
  },
  render(state, ctx) {
    const setFilter = () => {
      state.filter = { state: stateSelect.value, tag: tagInput.value.trim().toLowerCase(), model: modelInput.value.trim().toLowerCase() };
      const params = new URLSearchParams();
      if (stateSelect.value) params.set("state", stateSelect.value);
      if (tagInput.value.trim()) params.set("tag", tagInput.value.trim());
      if (modelInput.value.trim()) params.set("model", modelInput.value.trim());
      if (state.sort.key !== "name") params.set("sort", state.sort.key);
      if (state.sort.descending) params.set("desc", "1");
      ctx.setQuery(params);
      refilter(state);
    };
    const stateSelect = h("select", { id: "filter-state", onchange: setFilter },
      STATES.map((value) => h("option", { value, selected: value === state.filter.state }, value || "any")));
    const tagInput = h("input", { id: "filter-tag", type: "search", value: ctx.query.get("tag") || "", oninput: setFilter, onchange: setFilter });
    const modelInput = h("input", { id: "filter-model", type: "search", value: ctx.query.get("model") || "", oninput: setFilter, onchange: setFilter });
    state.count = h("span", { class: "muted", role: "status" });
    state.tbody = h("tbody", {});
    for (const node of state.nodes.values()) state.rows.set(node.id, row(node, ctx.settings));
    const columns = [
      { label: "Node", key: "name", sort: true }, { label: "State", key: "state", sort: true },
      { label: "Tags", class: "hide-narrow" }, { label: "Mode", class: "hide-narrow" },
      { label: "GPUs (busy, VRAM, °C)", key: "gpus", sort: true }, { label: "Free VRAM", key: "free", sort: true },
      { label: "Services", class: "hide-narrow" }, { label: "In flight", key: "inFlight", sort: true },
      { label: "Last seen", key: "seen", sort: true, class: "hide-narrow" },
    ];
    const sorting = {
      ...state.sort,
      by: (key) => {
        state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : false };
        const fresh = build();
        state.root.replaceWith(fresh);
        state.root = fresh;
        setFilter();
        // The keyboard stays where it was.
        fresh.querySelector(`th[data-key="${key}"] button`)?.focus();
      },
    };
    const build = () => {
      sorting.key = state.sort.key;
      sorting.descending = state.sort.descending;
      const wrap = table(columns, [], sorting);
      wrap.querySelector("tbody").replaceWith(state.tbody);
      order(state);
      return wrap;
    };
    state.root = build();
    refilter(state);
    return h("div", {},
      h("h1", {}, "Nodes"),
      h("div", { class: "filters", role: "search" },
        h("label", { for: "filter-state" }, "State", stateSelect),
        h("label", { for: "filter-tag" }, "Tag", tagInput),
        h("label", { for: "filter-model" }, "Model or GPU", modelInput),
        state.count),
      h("div", {}, state.root));
  },
  update(state, batch, ctx) {
    let changed = false;
    let added = false;
    for (const { kind, data } of batch) {
      if (kind !== "node") continue;
      state.nodes.set(data.id, data);
      const fresh = row(data, ctx.settings);
      fresh.hidden = !matches(data, state.filter);
      const old = state.rows.get(data.id);
      if (old) old.replaceWith(fresh);
      else added = true;
      state.rows.set(data.id, fresh);
      changed = true;
    }
    if (!changed) return;
    if (added || state.sort.key !== "name") order(state);
    refilter(state);
  },
};

// The dashboard's one script entry: routes by path (links change pages
// without reloading, so the page keeps one live stream), loads a page's
// data from the JSON API, and hands it live changes in batches.

import { h, put } from "./dom.js";
import { get } from "./api.js";
import { Live } from "./live.js";
import overview from "./pages/overview.js";
import nodes from "./pages/nodes.js";
import node from "./pages/node.js";
import jobs from "./pages/jobs.js";
import job from "./pages/job.js";
import alerts from "./pages/alerts.js";
import events from "./pages/events.js";

const ROUTES = [
  [/^\/$/, overview],
  [/^\/nodes$/, nodes],
  [/^\/nodes\/([^/]+)$/, node],
  [/^\/jobs$/, jobs],
  [/^\/jobs\/([^/]+)$/, job],
  [/^\/alerts$/, alerts],
  [/^\/events$/, events],
];

const main = document.getElementById("main");
let current = null;
let settings = { highTempCelsius: 85 };

function match(pathname) {
  for (const [pattern, page] of ROUTES) {
    const found = pattern.exec(pathname);
    if (found) return { page, param: found[1] ? decodeURIComponent(found[1]) : undefined };
  }
  return null;
}

function markNav() {
  for (const a of document.querySelectorAll(".top nav a")) {
    const path = a.getAttribute("href");
    const here = path === "/" ? location.pathname === "/" : location.pathname.startsWith(path);
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function route() {
  const found = match(location.pathname);
  markNav();
  if (!found) {
    current = null;
    put(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "/" }, "Back to the overview")));
    return;
  }
  const ctx = {
    param: found.param,
    query: new URLSearchParams(location.search),
    settings,
    // A page changing its own filters keeps them in the address.
    setQuery(params) {
      const search = params.toString();
      history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
    },
  };
  const loading = { page: found.page, ctx };
  current = loading;
  try {
    performance.mark("citadel:load");
    const state = await found.page.load(ctx);
    if (current !== loading) return;
    performance.mark("citadel:render:start");
    const root = found.page.render(state, ctx);
    put(main, root);
    performance.measure("citadel:render", "citadel:render:start");
    loading.state = state;
    document.title = `${found.page.title(state, ctx)} · citadel fleet`;
    main.dataset.page = found.page.name;
    main.dataset.ready = "true";
  } catch (error) {
    if (current !== loading) return;
    put(main, h("h1", {}, "Could not load this page"), h("p", { class: "error" }, error.message));
  }
}

function apply(batch) {
  const page = current;
  if (!page || !page.state) return;
  performance.mark("citadel:update:start");
  page.page.update(page.state, batch, page.ctx);
  performance.measure("citadel:update", "citadel:update:start");
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest("a[href]");
  if (!a || a.target || a.origin !== location.origin || !a.pathname || a.getAttribute("href").startsWith("#")) return;
  if (!match(a.pathname)) return;
  event.preventDefault();
  if (a.pathname + a.search !== location.pathname + location.search) history.pushState(null, "", a.pathname + a.search);
  main.dataset.ready = "false";
  route().then(() => main.focus({ preventScroll: true }));
});
window.addEventListener("popstate", () => route());

async function start() {
  try {
    const health = await get("/v1/health");
    if (health.highTempCelsius) settings.highTempCelsius = health.highTempCelsius;
  } catch {
    // The monitor answers the stream and pages even when this fails.
  }
  const live = new Live(document.getElementById("live"), apply, () => route());
  live.start();
  await route();
}

start();

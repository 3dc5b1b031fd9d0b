// Building the page without HTML strings: every value goes in as text
// (a node name or an event message can never become markup or script).

const SVG = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "x"}, "text", otherElement). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

/** Replace what `el` holds with `children`. */
export function put(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

/** A state badge: the word, coloured. */
export function badge(state) {
  const word = String(state ?? "unknown");
  return h("span", { class: `state state-${word.toLowerCase()}` }, word);
}

/** A link within the dashboard. */
export function link(path, ...children) {
  return h("a", { href: path }, ...children);
}

/** A table whose header cells may sort it: columns are {label, key, sort}. */
export function table(columns, rows, sorting) {
  const head = h("tr", {}, columns.map((column) => {
    if (!column.sort || !sorting) return h("th", { scope: "col", class: column.class }, column.label);
    const current = sorting.key === column.key;
    return h("th", {
      scope: "col", class: column.class, dataset: { key: column.key },
      "aria-sort": current ? (sorting.descending ? "descending" : "ascending") : "none",
    }, h("button", { type: "button", onclick: () => sorting.by(column.key) }, column.label));
  }));
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, rows)));
}

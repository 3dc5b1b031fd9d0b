// Line charts as SVG, drawn here: a time axis, a value axis with its
// unit, one line per series, gaps where nothing was reported.

import { h, s } from "./dom.js";

const W = 460;
const H = 170;
const PAD = { left: 64, right: 10, top: 10, bottom: 24 };
export const COLOURS = ["#0b5cad", "#c62828", "#2e7d4f", "#6a3fa0", "#b86e00", "#00838f", "#ad1457", "#4e342e"];

function clock(ms, span) {
  const date = new Date(ms);
  if (span > 2 * 86_400_000) return date.toLocaleDateString([], { month: "short", day: "numeric" });
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

/**
 * A chart of `series` ([{label, points: [[ms, value|null]]}]) over
 * [from, to], values shown with `format`; `max` fixes the top (100 for %).
 */
export function lineChart({ title, series, from, to, format, max }) {
  const values = series.flatMap((one) => one.points.map((point) => point[1])).filter((v) => v !== null && v !== undefined);
  const top = max ?? niceMax(Math.max(0, ...values) * 1.1);
  const x = (ms) => PAD.left + ((ms - from) / Math.max(1, to - from)) * (W - PAD.left - PAD.right);
  const y = (value) => H - PAD.bottom - (value / top) * (H - PAD.top - PAD.bottom);
  const parts = [s("title", {}, `${title}, ${clock(from, to - from)} to ${clock(to, to - from)}`)];
  for (const tick of [0, 0.5, 1]) {
    const value = top * tick;
    parts.push(s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(value), y2: y(value) }));
    parts.push(s("text", { x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  }
  for (let i = 0; i <= 4; i++) {
    const ms = from + ((to - from) * i) / 4;
    parts.push(s("text", { x: x(ms), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clock(ms, to - from)));
  }
  parts.push(s("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  parts.push(s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  series.forEach((one, index) => {
    const colour = COLOURS[index % COLOURS.length];
    let d = "";
    const points = one.points.filter(([ms]) => ms >= from - 60_000);
    points.forEach(([ms, value], at) => {
      if (value === null || value === undefined) return;
      const before = points[at - 1]?.[1];
      const after = points[at + 1]?.[1];
      const px = x(Math.max(ms, from)).toFixed(1);
      const py = y(Math.min(value, top)).toFixed(1);
      d += `${before === null || before === undefined ? "M" : "L"}${px},${py}`;
      // A minute with no neighbour is a dot, not an invisible line.
      if ((before === null || before === undefined) && (after === null || after === undefined)) {
        parts.push(s("circle", { cx: px, cy: py, r: 2.5, fill: colour }));
      }
    });
    if (d) parts.push(s("path", { class: "series", d, stroke: colour }));
  });
  const empty = values.length === 0;
  if (empty) parts.push(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data in this range"));
  return h("figure", { class: "chart" },
    h("h3", {}, title),
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, parts),
    series.length > 1
      ? h("div", { class: "legend" }, series.map((one, index) =>
        h("span", {}, h("i", { style: { background: COLOURS[index % COLOURS.length] } }), one.label)))
      : null);
}

// Small SVG line charts for the overview: no library, no canvas, readable by screen readers
// through a text summary beside each chart.

const SVG = "http://www.w3.org/2000/svg";
const W = 600;
const H = 160;
const PAD = 4;

function el(name, attrs) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten.
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Draws `series` ([{label, cls, values}], values oldest first, null for no sample) into
// the <svg> `svg`, `capacity` samples wide; `format` renders the axis maximum.
export function drawLines(svg, series, capacity, format) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v != null))));
  for (const f of [0.25, 0.5, 0.75]) {
    const y = PAD + (H - 2 * PAD) * f;
    svg.append(el("line", { x1: 0, x2: W, y1: y, y2: y, class: "grid" }));
  }
  for (const s of series) {
    const pts = [];
    const offset = capacity - s.values.length;
    s.values.forEach((v, i) => {
      if (v == null) return;
      const x = ((offset + i) / Math.max(1, capacity - 1)) * W;
      const y = H - PAD - (v / max) * (H - 2 * PAD);
      pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    if (pts.length) svg.append(el("polyline", { points: pts.join(" "), class: `line ${s.cls}` }));
  }
  return format(max);
}

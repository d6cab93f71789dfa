// Hand-written drawing for the dashboard (no library): the layer map on a canvas, SPC trends as
// SVG. Both mark what they drew in data attributes (data-cells, data-limits), which the browser
// test reads.
"use strict";

const Charts = (() => {
  // A perceptual ramp (viridis, 6 stops), interpolated.
  const RAMP = [[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37]];
  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
    const c = RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // grid: {cells_per_side, cell_mm, cells: [[ix, iy, mean]], anomalies: [{x_mm, y_mm}], ct_defects: [{x_mm, y_mm, detected}]}
  function layerMap(canvas, grid) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 28, size = Math.min(W, H - 16) - pad;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    const n = Math.max(1, grid.cells_per_side), cs = size / n, plate = n * grid.cell_mm;
    const means = grid.cells.map(c => c[2]);
    const lo = Math.min(...means), hi = Math.max(...means), span = hi - lo || 1;
    // y grows upwards on the plate: row 0 at the bottom.
    const px = x => pad + (x / plate) * size, py = y => size - (y / plate) * size;
    ctx.fillStyle = "#eef0f3"; ctx.fillRect(pad, 0, size, size);
    for (const [ix, iy, m] of grid.cells) {
      ctx.fillStyle = ramp((m - lo) / span);
      ctx.fillRect(pad + ix * cs, size - (iy + 1) * cs, Math.ceil(cs), Math.ceil(cs));
    }
    ctx.strokeStyle = "#9aa3af"; ctx.strokeRect(pad, 0, size, size);
    ctx.lineWidth = 2;
    for (const a of grid.anomalies || []) {
      const x = px(a.x_mm), y = py(a.y_mm);
      ctx.strokeStyle = "#e53e3e";
      ctx.beginPath(); ctx.moveTo(x - 5, y - 5); ctx.lineTo(x + 5, y + 5); ctx.moveTo(x + 5, y - 5); ctx.lineTo(x - 5, y + 5); ctx.stroke();
    }
    for (const d of grid.ct_defects || []) {
      ctx.strokeStyle = d.detected ? "#38a169" : "#d53f8c";
      ctx.beginPath(); ctx.arc(px(d.x_mm), py(d.y_mm), 7, 0, 2 * Math.PI); ctx.stroke();
    }
    ctx.lineWidth = 1;
    ctx.fillStyle = "#1d2330"; ctx.font = "11px sans-serif";
    ctx.fillText("0", pad - 10, size + 12); ctx.fillText(`${plate} mm`, pad + size - 40, size + 12);
    // The colour scale.
    for (let i = 0; i < 100; i++) { ctx.fillStyle = ramp(i / 99); ctx.fillRect(pad + (i / 100) * 160, size + 18, 2, 8); }
    ctx.fillStyle = "#1d2330";
    ctx.fillText(lo.toFixed(1), pad, H - 1); ctx.fillText(hi.toFixed(1), pad + 150, H - 1);
    canvas.dataset.cells = String(grid.cells.length);
    canvas.dataset.anomalies = String((grid.anomalies || []).length);
    canvas.dataset.ctDefects = String((grid.ct_defects || []).length);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  // A trend: points [[layer, value]], baseline [centre, sigma] or null, signals [{layer, value}].
  // Draws the centre line and the ±3σ limits of the statistic when the baseline is known.
  function trend(title, points, baseline, signals) {
    const W = 360, H = 170, l = 52, r = 8, t = 18, b = 22;
    const svg = el("svg", { width: W, height: H, class: "chart", "data-points": points.length, "data-limits": baseline ? "1" : "0" });
    el("text", { x: 6, y: 13, "font-size": 12, "font-weight": 600 }, svg).textContent = title;
    if (!points.length) return svg;
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (baseline) { lo = Math.min(lo, baseline[0] - 3.3 * baseline[1]); hi = Math.max(hi, baseline[0] + 3.3 * baseline[1]); }
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), span = hi - lo || 1;
    const X = x => l + (x - x0) / (x1 - x0) * (W - l - r), Y = y => t + (hi - y) / span * (H - t - b);
    el("rect", { x: l, y: t, width: W - l - r, height: H - t - b, fill: "#fafbfc", stroke: "#d9dde3" }, svg);
    const label = (y, text, color) => { el("text", { x: l - 4, y: Y(y) + 4, "font-size": 10, "text-anchor": "end", fill: color }, svg).textContent = text; };
    if (baseline) {
      const [c, s] = baseline;
      el("line", { x1: l, x2: W - r, y1: Y(c), y2: Y(c), stroke: "#2f855a", "stroke-width": 1.2, class: "centre" }, svg);
      for (const k of [-3, 3]) el("line", { x1: l, x2: W - r, y1: Y(c + k * s), y2: Y(c + k * s), stroke: "#c53030", "stroke-dasharray": "5 3", class: "limit" }, svg);
      label(c, "CL", "#2f855a"); label(c + 3 * s, "UCL", "#c53030"); label(c - 3 * s, "LCL", "#c53030");
    } else {
      label(hi, hi.toPrecision(4), "#6b7280"); label(lo, lo.toPrecision(4), "#6b7280");
    }
    el("polyline", { points: points.map(p => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: "#2b6cb0", "stroke-width": 1.3 }, svg);
    for (const s of signals) {
      el("circle", { cx: X(s.layer), cy: Y(s.value), r: 3.5, fill: "#e53e3e", class: "signal" }, svg);
    }
    el("text", { x: l, y: H - 6, "font-size": 10, fill: "#6b7280" }, svg).textContent = `layer ${x0}`;
    el("text", { x: W - r, y: H - 6, "font-size": 10, fill: "#6b7280", "text-anchor": "end" }, svg).textContent = `layer ${x1}`;
    return svg;
  }

  return { layerMap, trend };
})();

// Charts: uPlot, sized to its container and coloured from the stylesheet (light or dark).
import uPlot from "../vendor/uPlot.esm.js";
import { html, useEffect, useRef } from "./lib.js";
import { fields, timeZone, useTimeZone, zoneLabel } from "./ui.js";

const pad = (n) => String(n).padStart(2, "0");

/** Tick labels of a time axis in the shown zone, 24 h: days as MM-DD, else HH:MM (and the
 * day, MM-DD, at midnight, so hours over several days say which day). */
function timeTicks(u, splits, axisIdx, space, incr) {
  return splits.map((s) => {
    const [, mo, da, h, mi] = fields(new Date(s * 1000));
    return incr >= 86400 || (h === 0 && mi === 0) ? `${pad(mo)}-${pad(da)}` : `${pad(h)}:${pad(mi)}`;
  });
}

/** An axis as wide as its longest label (uPlot's fixed 50 px cuts "10,000" and up). */
function fitLabels(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1) return axis._size;
  let size = axis.ticks.size + axis.gap;
  const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
  if (longest) {
    u.ctx.font = axis.font[0];
    size += u.ctx.measureText(longest).width / devicePixelRatio;
  }
  return Math.ceil(size) + 4;
}

const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** A time-series chart; `data` is [xs (unix seconds), ys]; `bars` draws bars instead of a
 * line, each `step` seconds wide (a day, or an hour). */
export function TimeChart({ data, label, bars = false, step = 86400, height = 220 }) {
  const zone = useTimeZone();
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const element = box.current;
    const fg = cssVar("--fg");
    const grid = cssVar("--line");
    const accent = cssVar("--accent");
    const axis = { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } };
    const series = {
      label,
      stroke: accent,
      fill: bars ? accent : undefined,
      width: bars ? 0 : 2,
      points: { show: !bars, size: 5, fill: accent },
    };
    if (bars) series.paths = uPlot.paths.bars({ size: [0.7, 60] });
    const options = {
      width: Math.max(element.clientWidth, 200),
      height,
      legend: { show: false },
      cursor: { show: true, drag: { x: false, y: false } },
      scales: {
        // Bars are centred on their day (hour): half a step of margin keeps the first and last whole.
        x: { time: true, range: (u, min, max) => (bars ? [min - step / 2, max + step / 2] : [min, max]) },
        y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
      },
      // Ticks fall on the shown zone's hours and days; their labels say which zone.
      tzDate: (ts) => (timeZone() === "utc" ? uPlot.tzDate(new Date(ts * 1000), "Etc/UTC") : new Date(ts * 1000)),
      axes: [
        { ...axis, values: timeTicks, label: `Time (${zoneLabel()})`, labelSize: 20 },
        { ...axis, size: fitLabels, values: (u, splits) => splits.map((v) => v.toLocaleString()) },
      ],
      series: [{}, series],
    };
    plot.current = new uPlot(options, data, element);
    const resize = new ResizeObserver(() =>
      plot.current.setSize({ width: Math.max(element.clientWidth, 200), height }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [label, bars, step, height, zone]);
  useEffect(() => {
    // New data redraws the same chart (a poll does not rebuild it).
    if (plot.current && plot.current.data !== data) plot.current.setData(data);
  }, [data]);
  return html`<div class="chart" ref=${box} role="img" aria-label=${label}></div>`;
}

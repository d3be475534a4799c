/**
 * A small SVG line-chart writer (no dependencies): several series over a shared x axis, each on the left or the
 * right y axis, with "nice" ticks (1, 2, 5 x 10^k), grid lines, a legend and point markers. trainingCurvesSvg()
 * draws the usual picture of a run: train loss (left axis) and eval top-1 (right axis) per epoch.
 */

export interface Series {
  name: string;
  points: readonly (readonly [number, number])[];
  axis?: 'left' | 'right';
  color?: string;
}

export interface ChartOptions {
  series: readonly Series[];
  title?: string;
  xLabel?: string;
  leftLabel?: string;
  rightLabel?: string;
  width?: number;
  height?: number;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Tick values covering [lo, hi] with about `count` steps of 1, 2 or 5 times a power of ten. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi === lo) {
    const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= d;
    hi += d;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const start = Math.floor(lo / step) * step;
  const ticks: number[] = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1]! < hi) ticks.push(Number((ticks[ticks.length - 1]! + step).toPrecision(12)));
  return ticks;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

export function lineChartSvg(opts: ChartOptions): string {
  const width = opts.width ?? 720, height = opts.height ?? 400;
  const m = { left: 64, right: 64, top: opts.title ? 40 : 20, bottom: 72 };
  const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
  const all = opts.series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const xs = all.map(([x]) => x);
  const xt = niceTicks(xs.length ? Math.min(...xs) : 0, xs.length ? Math.max(...xs) : 1, 8);
  const axisTicks = (axis: 'left' | 'right'): number[] | null => {
    const ys = opts.series.filter((s) => (s.axis ?? 'left') === axis).flatMap((s) => s.points.map(([, y]) => y)).filter(Number.isFinite);
    return ys.length ? niceTicks(Math.min(...ys), Math.max(...ys), 5) : null;
  };
  const lt = axisTicks('left'), rt = axisTicks('right');
  const sx = (x: number): number => m.left + ((x - xt[0]!) / (xt[xt.length - 1]! - xt[0]! || 1)) * pw;
  const syOf = (t: number[]) => (y: number): number => m.top + ph - ((y - t[0]!) / (t[t.length - 1]! - t[0]! || 1)) * ph;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  if (opts.title) out.push(`<text x="${width / 2}" y="24" text-anchor="middle" font-size="15">${esc(opts.title)}</text>`);
  for (const x of xt) {
    const px = sx(x).toFixed(1);
    out.push(`<line x1="${px}" y1="${m.top}" x2="${px}" y2="${m.top + ph}" stroke="#eee"/>`);
    out.push(`<text x="${px}" y="${m.top + ph + 16}" text-anchor="middle">${fmt(x)}</text>`);
  }
  if (lt) {
    const sy = syOf(lt);
    for (const y of lt) {
      const py = sy(y).toFixed(1);
      out.push(`<line x1="${m.left}" y1="${py}" x2="${m.left + pw}" y2="${py}" stroke="#eee"/>`);
      out.push(`<text x="${m.left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle">${fmt(y)}</text>`);
    }
  }
  if (rt) {
    const sy = syOf(rt);
    for (const y of rt) out.push(`<text x="${m.left + pw + 6}" y="${sy(y).toFixed(1)}" dominant-baseline="middle">${fmt(y)}</text>`);
  }
  out.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  if (opts.xLabel) out.push(`<text x="${m.left + pw / 2}" y="${m.top + ph + 36}" text-anchor="middle">${esc(opts.xLabel)}</text>`);
  if (opts.leftLabel) out.push(`<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(opts.leftLabel)}</text>`);
  if (opts.rightLabel) out.push(`<text transform="translate(${width - 12} ${m.top + ph / 2}) rotate(90)" text-anchor="middle">${esc(opts.rightLabel)}</text>`);
  opts.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length]!;
    const ticks = (s.axis ?? 'left') === 'left' ? lt : rt;
    if (!ticks) return;
    const sy = syOf(ticks);
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (pts.length > 1) {
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`);
    }
    if (pts.length <= 60) for (const [x, y] of pts) out.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"/>`);
    const lx = m.left + i * 170, ly = height - 14;
    out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 20}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${lx + 26}" y="${ly}" dominant-baseline="middle">${esc(s.name)}${s.axis === 'right' ? ' (right)' : ''}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export interface CurvePoint {
  epoch: number;
  trainLoss?: number;
  evalTop1?: number;
  emaTop1?: number;
}

/** Train loss (left axis) and eval top-1 / EMA top-1 (right axis) per epoch. */
export function trainingCurvesSvg(points: readonly CurvePoint[], title = 'Training curves'): string {
  const pick = (k: keyof CurvePoint): [number, number][] => points.filter((p) => typeof p[k] === 'number').map((p) => [p.epoch, p[k] as number]);
  const series: Series[] = [{ name: 'train loss', points: pick('trainLoss'), axis: 'left' }];
  if (points.some((p) => p.evalTop1 !== undefined)) series.push({ name: 'eval top-1 %', points: pick('evalTop1'), axis: 'right' });
  if (points.some((p) => p.emaTop1 !== undefined)) series.push({ name: 'EMA top-1 %', points: pick('emaTop1'), axis: 'right' });
  return lineChartSvg({ series, title, xLabel: 'epoch', leftLabel: 'loss', rightLabel: 'top-1 accuracy (%)' });
}

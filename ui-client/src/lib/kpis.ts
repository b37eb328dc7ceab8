// The KPI tiles: what each shows, and how the communes' values add up to the territory's (sums
// of counts, ratios of sums; a median does not add up, so it is shown for one commune only).
// Pure, tested in tests/unit.

import type { Kpi, KPI_TILES } from "./protocol";
import type { KpiBand, KpiTargets } from "./api";
import { t, type Key } from "./i18n.svelte";

export type Tile = {
  /// One of the contract's KPI tiles (proto::live::KPI_TILES), in their order.
  id: (typeof KPI_TILES)[number];
  label: Key;
  domain: string;
  /// The value for a set of communes' KPI values (one object per commune), or null.
  value: (communes: Record<string, number>[]) => number | null;
  format: (v: number) => string;
  /// Higher is worse: the tile turns to alarm colours above zero.
  alarming?: boolean;
  /// What the value can be at all (a ratio 0 to 1, a count from 0): the sparkline's range stays
  /// within it.
  bounds?: [number, number];
};

const sum = (list: Record<string, number>[], key: string) => list.reduce((s, v) => s + (v[key] ?? 0), 0);
const has = (list: Record<string, number>[], key: string) => list.some((v) => v[key] !== undefined);
const ratio = (num: number, den: number) => (den > 0 ? num / den : null);
const percent = (v: number) => `${(v * 100).toFixed(1)} %`;
const count = (v: number) => String(Math.round(v));

export const TILES: Tile[] = [
  {
    id: "lighting_availability",
    bounds: [0, 1],
    label: "kpi_lighting_availability",
    domain: "lighting",
    value: (l) => (has(l, "lamps_total") ? ratio(sum(l, "lamps_total") - sum(l, "lamps_dark"), sum(l, "lamps_total")) : null),
    // Lamps out are a few in thousands: two decimals show them.
    format: (v) => `${(v * 100).toFixed(2)} %`,
  },
  {
    id: "lighting_power",
    bounds: [0, Infinity],
    label: "kpi_lighting_power",
    domain: "lighting",
    value: (l) => (has(l, "power_w") ? sum(l, "power_w") / 1000 : null),
    format: (v) => `${v.toFixed(0)} kW`,
  },
  {
    id: "transport_vehicles",
    bounds: [0, Infinity],
    label: "kpi_transport_vehicles",
    domain: "transport",
    value: (l) => (has(l, "vehicles") ? sum(l, "vehicles") : null),
    format: count,
  },
  {
    id: "transport_on_time",
    bounds: [0, 1],
    label: "kpi_transport_on_time",
    domain: "transport",
    value: (l) => (has(l, "with_adherence") ? ratio(sum(l, "on_time"), sum(l, "with_adherence")) : null),
    format: percent,
  },
  {
    id: "transport_delay",
    label: "kpi_transport_delay",
    domain: "transport",
    value: (l) =>
      has(l, "with_adherence")
        ? ratio(
            l.reduce((s, v) => s + (v.mean_delay_s ?? 0) * (v.with_adherence ?? 0), 0),
            sum(l, "with_adherence"),
          )
        : null,
    format: (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v / 60).toFixed(1)} min`,
  },
  {
    id: "water_leaks",
    bounds: [0, Infinity],
    label: "kpi_water_leaks",
    domain: "water",
    value: (l) => (has(l, "active_leaks") ? sum(l, "active_leaks") : null),
    format: count,
    alarming: true,
  },
  {
    id: "water_bursts",
    bounds: [0, Infinity],
    label: "kpi_water_bursts",
    domain: "water",
    value: (l) => (has(l, "active_bursts") ? sum(l, "active_bursts") : null),
    format: count,
    alarming: true,
  },
  {
    id: "water_night_flow",
    bounds: [0, Infinity],
    label: "kpi_water_night_flow",
    domain: "water",
    value: (l) => {
      const flows = l.flatMap((v) => Object.entries(v).filter(([k]) => k.startsWith("night_flow:")));
      return flows.length > 0 ? flows.reduce((s, [, f]) => s + f, 0) : null;
    },
    format: (v) => `${v.toFixed(1)} m³/h`,
  },
  {
    id: "reports_open",
    bounds: [0, Infinity],
    label: "kpi_reports_open",
    domain: "reports",
    value: (l) => (has(l, "open") ? sum(l, "open") : null),
    format: count,
  },
  {
    id: "reports_received",
    bounds: [0, Infinity],
    label: "kpi_reports_received",
    domain: "reports",
    value: (l) => (has(l, "received_last_24h") ? sum(l, "received_last_24h") : null),
    format: count,
  },
  {
    id: "reports_median",
    bounds: [0, Infinity],
    label: "kpi_reports_median",
    domain: "reports",
    value: (l) => (l.length === 1 && (l[0]?.median_time_to_close_s ?? 0) > 0 ? (l[0]?.median_time_to_close_s ?? null) : null),
    format: (v) => (v >= 86_400 ? t("days_value", { n: (v / 86_400).toFixed(1) }) : t("hours_value", { n: (v / 3600).toFixed(1) })),
  },
];

/// The latest values of a domain's KPIs, one object per commune.
export function latest(kpis: Iterable<Kpi>, domain: string): Record<string, number>[] {
  return [...kpis].filter((k) => k.domain === domain).map((k) => k.values);
}

/// A tile's series over the KPIs' history: samples grouped by the minute they were taken in
/// (the services publish every commune's KPIs together), oldest first.
export function series(kpis: Iterable<Kpi>, tile: Tile): [number[], number[]] {
  // Per minute, each commune's latest sample (a service may publish several a minute: summed,
  // they would count its figure several times).
  const buckets = new Map<number, Map<string, { at: number; values: Record<string, number> }>>();
  for (const k of kpis) {
    if (k.domain !== tile.domain) continue;
    for (const sample of k.history ?? [{ at: k.at, values: k.values }]) {
      const at = Date.parse(sample.at);
      const t = Math.floor(at / 60_000) * 60;
      if (!Number.isFinite(t)) continue;
      const communes = buckets.get(t) ?? new Map();
      const known = communes.get(k.commune);
      if (!known || known.at <= at) communes.set(k.commune, { at, values: sample.values });
      buckets.set(t, communes);
    }
  }
  const xs: number[] = [];
  const ys: number[] = [];
  for (const t of [...buckets.keys()].sort((a, b) => a - b)) {
    const v = tile.value([...(buckets.get(t)?.values() ?? [])].map((s) => s.values));
    if (v === null) continue;
    xs.push(t);
    ys.push(v);
  }
  return [xs, ys];
}

/// Below this many vehicles in service, the map's transport layer says that few run at this hour.
export const FEW_VEHICLES = 10;

/// Vehicles in service now over the communes' transport KPIs, or null when none is known.
export function vehiclesInService(kpis: Kpi[]): number | null {
  const values = latest(kpis, "transport");
  return has(values, "vehicles") ? sum(values, "vehicles") : null;
}

/// A tile's band: the commune's own when one commune is in view and it has one, else the default.
export function bandOf(targets: KpiTargets | undefined, tile: string, commune: string): KpiBand | null {
  return (commune ? targets?.communes[commune]?.[tile] : undefined) ?? targets?.defaults[tile] ?? null;
}

export type BandState = "normal" | "warning" | "alarm";

/// Where a value stands in its band. A warning below the target means higher is better.
export function bandState(band: KpiBand, value: number): BandState {
  if (band.warning < band.target) return value < band.alarm ? "alarm" : value < band.warning ? "warning" : "normal";
  return value > band.alarm ? "alarm" : value > band.warning ? "warning" : "normal";
}

/// The sparkline's fixed vertical range: its values, the target and the alarm threshold, so that
/// noise around a good value does not fill the tile as if it were a swing.
export function sparkRange(ys: number[], band: KpiBand | null, bounds: [number, number] = [-Infinity, Infinity]): [number, number] {
  const values = [...ys, ...(band ? [band.target, band.alarm] : [])].filter(Number.isFinite);
  if (values.length === 0) return [Math.max(0, bounds[0]), Math.min(1, bounds[1])];
  let [low, high] = [Math.min(...values), Math.max(...values)];
  if (low === high) [low, high] = [low - Math.abs(low || 1) * 0.1, high + Math.abs(high || 1) * 0.1];
  const pad = (high - low) * 0.08;
  return [Math.max(bounds[0], low - pad), Math.min(bounds[1], high + pad)];
}

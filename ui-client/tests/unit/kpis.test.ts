// KPI tiles (src/lib/kpis.ts): the territory's figures from the communes'.
import { test } from "vitest";
import assert from "node:assert/strict";
import { KPI_TILES } from "../../src/lib/protocol.generated.ts";
import { TILES, bandOf, bandState, latest, series, sparkRange, vehiclesInService, FEW_VEHICLES } from "../../src/lib/kpis.ts";
import type { Kpi } from "../../src/lib/protocol.ts";

const tile = (id: string) => TILES.find((t) => t.id === id)!;

test("ratios are ratios of sums, not means of ratios", () => {
  const communes = [
    { lamps_total: 900, lamps_dark: 0 },
    { lamps_total: 100, lamps_dark: 50 },
  ];
  assert.equal(tile("lighting_availability").value(communes), 0.95);
  const transport = [
    { with_adherence: 30, on_time: 30, mean_delay_s: 0 },
    { with_adherence: 10, on_time: 0, mean_delay_s: 400 },
  ];
  assert.equal(tile("transport_on_time").value(transport), 0.75);
  assert.equal(tile("transport_delay").value(transport), 100);
});

test("a median is shown for one commune only, and missing values give no figure", () => {
  assert.equal(tile("reports_median").value([{ median_time_to_close_s: 7200 }]), 7200);
  assert.equal(tile("reports_median").value([{ median_time_to_close_s: 7200 }, { median_time_to_close_s: 10 }]), null);
  assert.equal(tile("water_leaks").value([]), null);
  assert.equal(tile("water_night_flow").value([{ "night_flow:DMA-1": 90.5, "night_flow:DMA-2": 9.5, active_leaks: 1 }]), 100);
});

test("history samples of the same minute add up across communes", () => {
  const kpi = (commune: string, history: [string, number][]): Kpi => ({
    domain: "water",
    commune,
    at: history[history.length - 1]![0],
    values: { active_leaks: history[history.length - 1]![1] },
    history: history.map(([at, v]) => ({ at, values: { active_leaks: v } })),
  });
  const kpis = [
    kpi("a", [["2026-11-23T10:00:05Z", 1], ["2026-11-23T10:01:05Z", 2]]),
    kpi("b", [["2026-11-23T10:00:07Z", 1], ["2026-11-23T10:01:06Z", 0]]),
  ];
  const [xs, ys] = series(kpis, tile("water_leaks"));
  assert.deepEqual(ys, [2, 2]);
  assert.equal(xs[1]! - xs[0]!, 60);
  assert.deepEqual(latest(kpis, "water"), [{ active_leaks: 2 }, { active_leaks: 0 }]);
});

test("vehicles in service add up over the communes, and none known is no figure", () => {
  const kpi = (domain: string, commune: string, values: Record<string, number>): Kpi => ({ domain, commune, at: "2026-12-01T08:30:00Z", values });
  assert.equal(vehiclesInService([kpi("transport", "34172", { vehicles: 2 }), kpi("transport", "34129", { vehicles: 1 })]), 3);
  assert.equal(vehiclesInService([kpi("lighting", "34172", { lamps_total: 10 })]), null);
  assert.equal(vehiclesInService([]), null);
  assert.ok(3 < FEW_VEHICLES, "three vehicles are few: the layer says so");
});

test("a value stands in its band: higher is better below the target, lower is better above it", () => {
  const availability = { target: 0.99, warning: 0.98, alarm: 0.95 };
  assert.equal(bandState(availability, 0.995), "normal");
  assert.equal(bandState(availability, 0.98), "normal", "at the warning threshold: not yet");
  assert.equal(bandState(availability, 0.97), "warning");
  assert.equal(bandState(availability, 0.6), "alarm");
  const delay = { target: 60, warning: 180, alarm: 300 };
  assert.equal(bandState(delay, -30), "normal");
  assert.equal(bandState(delay, 200), "warning");
  assert.equal(bandState(delay, 301), "alarm");
});

test("a commune's band is its own when it has one, else the default", () => {
  const targets = {
    defaults: { transport_on_time: { target: 0.9, warning: 0.85, alarm: 0.75 } },
    communes: { "34172": { transport_on_time: { target: 0.95, warning: 0.9, alarm: 0.8 } } },
  };
  assert.equal(bandOf(targets, "transport_on_time", "34172")?.target, 0.95);
  assert.equal(bandOf(targets, "transport_on_time", "34129")?.target, 0.9);
  assert.equal(bandOf(targets, "transport_on_time", "")?.target, 0.9, "the territory: the default");
  assert.equal(bandOf(targets, "water_leaks", "34172"), null);
  assert.equal(bandOf(undefined, "transport_on_time", ""), null);
});

test("a sparkline's range holds its values, the target and the alarm threshold, and never collapses", () => {
  const [low, high] = sparkRange([0.996, 0.997], { target: 0.99, warning: 0.98, alarm: 0.95 });
  assert.ok(low < 0.95 && high > 0.997, `${low}..${high}`);
  const [flatLow, flatHigh] = sparkRange([5, 5, 5], null);
  assert.ok(flatLow < 5 && flatHigh > 5);
  assert.deepEqual(sparkRange([], null), [0, 1]);
});

test("a sparkline's range stays within what the value can be", () => {
  const [low, high] = sparkRange([0.999, 1], { target: 0.99, warning: 0.98, alarm: 0.95 }, [0, 1]);
  assert.ok(high <= 1 && low >= 0, `${low}..${high}`);
  assert.ok(sparkRange([0, 3], null, [0, Infinity])[0] >= 0, "no negative power");
});

test("a commune publishing several times a minute counts once in that minute", () => {
  const at = (s: number) => new Date(Date.UTC(2026, 11, 6, 3, 0, s)).toISOString();
  const kpis: Kpi[] = [
    {
      domain: "reports",
      commune: "34172",
      at: at(50),
      values: { open: 2 },
      history: [0, 20, 40].map((s) => ({ at: at(s), values: { open: s === 40 ? 3 : 2 } })),
    },
    { domain: "reports", commune: "34129", at: at(30), values: { open: 5 } },
  ];
  const [xs, ys] = series(kpis, tile("reports_open"));
  assert.equal(xs.length, 1);
  assert.deepEqual(ys, [8], "34172's latest of the minute (3) and 34129's (5)");
});

test("the tiles are the contract's, in its order", () => {
  assert.deepEqual(TILES.map((t) => t.id), [...KPI_TILES]);
});

// KPI tiles (src/lib/kpis.ts): the territory's figures from the communes'.
import { test } from "vitest";
import assert from "node:assert/strict";
import { TILES, latest, series, vehiclesInService, FEW_VEHICLES } from "../../src/lib/kpis.ts";
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

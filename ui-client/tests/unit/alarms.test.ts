// The alarm list's rules (src/lib/alarms.ts), with vitest (no browser).
import { test } from "vitest";
import assert from "node:assert/strict";
import { Ringer, alarmMetrics, compare, counts, flooding, groups, matches } from "../../src/lib/alarms.ts";
import type { Alarm } from "../../src/lib/protocol.ts";

const now = Date.parse("2026-11-23T10:00:00Z");

function alarm(key: string, over: Partial<Alarm> = {}): Alarm {
  return {
    key,
    domain: "lighting",
    alarm_type: "lamp_failure",
    severity: "major",
    commune: "34172",
    asset_id: "EP1",
    asset_ids: ["EP1"],
    position: null,
    details: {},
    active: true,
    first_raised_at: "2026-11-23T09:00:00.000000000Z",
    last_raised_at: "2026-11-23T09:00:00.000000000Z",
    raise_count: 1,
    ...over,
  };
}

const all = { domain: "", severity: "", state: "all", commune: "" };

test("filters by state: active hides cleared and shelved alarms", () => {
  const shelved = alarm("s", { shelved_until: "2026-11-23T11:00:00Z" });
  const expiredShelve = alarm("e", { shelved_until: "2026-11-23T09:30:00Z" });
  const cleared = alarm("c", { active: false });
  const active = { ...all, state: "active" };
  assert.equal(matches(shelved, active, now), false);
  assert.equal(matches(expiredShelve, active, now), true, "a shelve that expired no longer hides");
  assert.equal(matches(cleared, active, now), false);
  assert.equal(matches(cleared, { ...all, state: "cleared" }, now), true);
  assert.equal(matches(shelved, { ...all, state: "shelved" }, now), true);
  assert.equal(matches(alarm("a", { acknowledged: true }), { ...all, state: "unacknowledged" }, now), false);
});

test("filters by commune, domain and severity", () => {
  const a = alarm("a", { commune: "34129", domain: "water", severity: "critical" });
  assert.equal(matches(a, { ...all, commune: "34172" }, now), false);
  assert.equal(matches(a, { ...all, commune: "34129", domain: "water", severity: "critical" }, now), true);
  assert.equal(matches(a, { ...all, domain: "lighting" }, now), false);
  assert.equal(matches(a, { ...all, severity: "minor" }, now), false);
});

test("sorts by severity, unacknowledged first, then the most recent", () => {
  const list = [
    alarm("minor", { severity: "minor", last_raised_at: "2026-11-23T09:59:00Z" }),
    alarm("crit-acked", { severity: "critical", acknowledged: true, last_raised_at: "2026-11-23T09:58:00Z" }),
    alarm("crit-old", { severity: "critical", last_raised_at: "2026-11-23T08:00:00Z" }),
    alarm("crit-new", { severity: "critical", last_raised_at: "2026-11-23T09:00:00Z" }),
  ];
  assert.deepEqual(list.sort(compare("severity")).map((a) => a.key), ["crit-new", "crit-old", "crit-acked", "minor"]);
  assert.deepEqual(list.sort(compare("recent")).map((a) => a.key), ["minor", "crit-acked", "crit-new", "crit-old"]);
});

test("counts active, unacknowledged and critical alarms, shelved ones apart", () => {
  const list = [
    alarm("a", { severity: "critical" }),
    alarm("b", { acknowledged: true }),
    alarm("c", { active: false }),
    alarm("d", { severity: "critical", shelved_until: "2026-11-23T12:00:00Z" }),
  ];
  assert.deepEqual(counts(list, now), { active: 2, unack: 2, critical: 1 });
});

test("the default filter keeps alarms that cleared without an acknowledgement", () => {
  const attention = { ...all, state: "attention" };
  assert.ok(matches(alarm("a"), attention, now), "active");
  assert.ok(matches(alarm("b", { active: false }), attention, now), "cleared, not acknowledged: still to handle");
  assert.ok(!matches(alarm("c", { active: false, acknowledged: true }), attention, now), "cleared and seen");
  assert.ok(!matches(alarm("d", { shelved_until: "2026-11-23T11:00:00Z" }), attention, now), "shelved");
});

test("the alarm system's health: rate, standing, chattering, priorities", () => {
  const m = alarmMetrics(
    [
      alarm("new", { last_raised_at: "2026-11-23T09:55:00Z", severity: "critical" }),
      alarm("old", { first_raised_at: "2026-11-21T09:00:00Z", last_raised_at: "2026-11-21T09:00:00Z" }),
      alarm("noisy", { raise_count: 7, last_raised_at: "2026-11-23T09:58:00Z" }),
      alarm("gone", { active: false, last_raised_at: "2026-11-23T09:59:00Z" }),
    ],
    now,
  );
  assert.equal(m.rate, 3, "raised in the last 10 minutes");
  assert.equal(m.standing, 1);
  assert.equal(m.chattering, 1);
  assert.deepEqual(m.bySeverity, { critical: 1, major: 2 });
});

test("groups by type and commune, in the list's order", () => {
  const g = groups([alarm("1"), alarm("2", { commune: "34129" }), alarm("3"), alarm("4", { alarm_type: "late", domain: "transport" })]);
  assert.deepEqual(
    g.map((x) => [x.id, x.alarms.map((a) => a.key)]),
    [
      ["lighting/lamp_failure@34172", ["1", "3"]],
      ["lighting/lamp_failure@34129", ["2"]],
      ["transport/late@34172", ["4"]],
    ],
  );
});

test("one call per burst, repeated while a critical alarm waits, once per flood", () => {
  const r = new Ringer();
  assert.ok(r.raised(0));
  assert.ok(!r.raised(5_000), "the same burst");
  assert.ok(r.raised(12_000), "a new burst");
  assert.ok(!r.tick(1, 20_000), "too soon");
  assert.ok(r.tick(1, 42_000), "again while unacknowledged");
  assert.ok(!r.tick(0, 90_000), "nothing waits");
  assert.ok(r.flood(true));
  assert.ok(!r.flood(true), "once per flood");
  assert.ok(!r.flood(false));
  assert.ok(r.flood(true), "a new flood");
});

test("a flood begins at the threshold and ends only below half of it", () => {
  assert.equal(flooding(false, 9, 10), false);
  assert.equal(flooding(false, 10, 10), true);
  assert.equal(flooding(true, 6, 10), true, "hovering: still a flood");
  assert.equal(flooding(true, 4, 10), false);
});

// The alarm list's rules (src/lib/alarms.ts), with vitest (no browser).
import { test } from "vitest";
import assert from "node:assert/strict";
import { compare, counts, matches } from "../../src/lib/alarms.ts";
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

// The alarm list's rules, pure so that they are tested without a browser (tests/unit).

import type { Alarm } from "./protocol";
import { severityRank } from "./protocol";

export type AlarmFilters = { domain: string; severity: string; state: string; commune: string };

export function isShelved(a: Alarm, now: number): boolean {
  return !!a.shelved_until && Date.parse(a.shelved_until) > now;
}

export function matches(a: Alarm, f: AlarmFilters, now: number): boolean {
  if (f.domain && a.domain !== f.domain) return false;
  if (f.severity && a.severity !== f.severity) return false;
  if (f.commune && a.commune !== f.commune) return false;
  switch (f.state) {
    case "active":
      return a.active && !isShelved(a, now);
    case "unacknowledged":
      return !a.acknowledged && !isShelved(a, now);
    case "cleared":
      return !a.active;
    case "shelved":
      return isShelved(a, now);
    default:
      return true;
  }
}

export function compare(sort: string): (a: Alarm, b: Alarm) => number {
  const recent = (a: Alarm, b: Alarm) => (a.last_raised_at < b.last_raised_at ? 1 : a.last_raised_at > b.last_raised_at ? -1 : 0);
  const bySeverity = (a: Alarm, b: Alarm) => severityRank(a.severity) - severityRank(b.severity);
  // Unacknowledged first within a severity: what still needs someone.
  const byAck = (a: Alarm, b: Alarm) => Number(!!a.acknowledged) - Number(!!b.acknowledged);
  const key = (a: Alarm, b: Alarm) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
  switch (sort) {
    case "recent":
      return (a, b) => recent(a, b) || bySeverity(a, b) || key(a, b);
    case "commune":
      return (a, b) => a.commune.localeCompare(b.commune) || bySeverity(a, b) || recent(a, b) || key(a, b);
    default:
      return (a, b) => bySeverity(a, b) || byAck(a, b) || recent(a, b) || key(a, b);
  }
}

export type AlarmCounts = { active: number; unack: number; critical: number };

export function counts(alarms: Iterable<Alarm>, now: number): AlarmCounts {
  const c = { active: 0, unack: 0, critical: 0 };
  for (const a of alarms) {
    if (isShelved(a, now)) continue;
    if (a.active) c.active += 1;
    if (!a.acknowledged) c.unack += 1;
    if (a.active && a.severity === "critical") c.critical += 1;
  }
  return c;
}

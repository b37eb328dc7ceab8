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
    // What still needs someone: active, or cleared without an acknowledgement (an alarm that came
    // and went at 03:00 stays until someone has seen it).
    case "attention":
      return (a.active || !a.acknowledged) && !isShelved(a, now);
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

/// Alarms raised in the last 10 minutes count towards a flood (EEMUA 191: more than 10 in 10
/// minutes for one operator is more than one can handle).
export const FLOOD_WINDOW_MS = 10 * 60 * 1000;
export const FLOOD_THRESHOLD = 10;
/// Raised this often in its life, an alarm is chattering.
export const CHATTERING_RAISES = 5;
/// Active this long, an alarm is standing.
export const STANDING_MS = 24 * 3600 * 1000;

export type AlarmMetrics = {
  /// Alarms (last) raised in the flood window.
  rate: number;
  standing: number;
  chattering: number;
  bySeverity: Record<string, number>;
};

/// The alarm system's own health, for the operator (ISA-18.2): the rate, the standing and
/// chattering alarms, and the priority distribution of what is active.
export function alarmMetrics(alarms: Iterable<Alarm>, now: number): AlarmMetrics {
  const m: AlarmMetrics = { rate: 0, standing: 0, chattering: 0, bySeverity: {} };
  for (const a of alarms) {
    if (isShelved(a, now)) continue;
    const raised = Date.parse(a.last_raised_at);
    if (now - raised <= FLOOD_WINDOW_MS) m.rate += 1;
    if (!a.active) continue;
    if (now - Date.parse(a.first_raised_at) >= STANDING_MS) m.standing += 1;
    if (a.raise_count >= CHATTERING_RAISES) m.chattering += 1;
    m.bySeverity[a.severity] = (m.bySeverity[a.severity] ?? 0) + 1;
  }
  return m;
}

/// `first`: its first alarm in the list's order (the most urgent when sorted by severity).
export type AlarmGroup = { id: string; alarm_type: string; commune: string; first: Alarm; alarms: Alarm[] };

/// Whether a flood goes on: it begins at `threshold` alarms in the window and ends only below half
/// of it, so that a rate hovering at the threshold does not switch the list and the sound on and
/// off.
export function flooding(wasFlooding: boolean, rate: number, threshold: number): boolean {
  return wasFlooding ? rate >= threshold / 2 : rate >= threshold;
}

/// The list's rows grouped by type and commune, in the order of their first alarm (the list's
/// sort); a group of one is a plain row.
export function groups(sorted: Alarm[]): AlarmGroup[] {
  const byId = new Map<string, AlarmGroup>();
  const out: AlarmGroup[] = [];
  for (const a of sorted) {
    const id = `${a.domain}/${a.alarm_type}@${a.commune}`;
    let g = byId.get(id);
    if (!g) {
      g = { id, alarm_type: a.alarm_type, commune: a.commune, first: a, alarms: [] };
      byId.set(id, g);
      out.push(g);
    }
    g.alarms.push(a);
  }
  return out;
}

/// Rings for alarms: once per burst of critical alarms (those raised within BURST_MS of the
/// first are one call), again every REPEAT_MS while a critical alarm waits for its
/// acknowledgement, and once when a flood begins.
export class Ringer {
  static BURST_MS = 10_000;
  static REPEAT_MS = 30_000;
  #lastRing = -Infinity;
  #burstUntil = -Infinity;
  #flooding = false;

  /// A critical alarm was raised (or raised again): ring unless this burst already rang.
  raised(now: number): boolean {
    if (now < this.#burstUntil) return false;
    this.#burstUntil = now + Ringer.BURST_MS;
    this.#lastRing = now;
    return true;
  }

  /// Every second: whether to ring again (`waiting`: critical alarms active and unacknowledged).
  tick(waiting: number, now: number): boolean {
    if (waiting === 0 || now - this.#lastRing < Ringer.REPEAT_MS) return false;
    this.#lastRing = now;
    return true;
  }

  /// Whether a flood begins now (true once per flood).
  flood(flooding: boolean): boolean {
    const begins = flooding && !this.#flooding;
    this.#flooding = flooding;
    return begins;
  }
}

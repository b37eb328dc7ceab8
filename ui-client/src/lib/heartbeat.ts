// The gateway's heartbeat interval as the console learns it. Pure, tested in tests/unit.

/// Gaps kept to learn from.
export const GAPS_KEPT = 9;
/// Gaps needed before the learnt interval replaces the default.
const GAPS_NEEDED = 3;

/// The median of the latest gaps between heartbeats (ms), or `fallback` until there are a few.
/// Not the shortest gap: frames queued while the page was busy (drawing 30,000 lamps) arrive back
/// to back, and one such gap made the console believe the gateway beat every 60 ms, call its data
/// stale at once and drop a healthy connection.
export function heartbeatInterval(gaps: number[], fallback: number): number {
  if (gaps.length < GAPS_NEEDED) return fallback;
  const sorted = [...gaps].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? fallback;
}

// The gateway's clock, as the console estimates it from the `Date` header of the gateway's
// answers. Ages ("2 min ago", the data's age when stale) are measured against it, not against
// the operator's PC: a PC whose clock is off by an hour must not show fresh data as an hour old,
// nor old data as fresh. The header has a one-second resolution; ages are shown in seconds.

/// Below this, a new estimate is noise around the current one and is not taken.
const JITTER_MS = 1500;
/// An answer slower than this does not move a known estimate.
const SLOW_MS = 1000;

export const serverClock = $state({ offsetMs: 0, known: false });

/// Takes the offset from one answer of the gateway; `sentAt` is when the request left (ms).
export function learnClock(response: Response, sentAt: number, receivedAt = Date.now()) {
  const offset = offsetFrom(response.headers.get("date"), sentAt, receivedAt);
  if (offset === null) return;
  // A slow answer's middle is uncertain by half its round trip: it does not replace an estimate.
  if (serverClock.known && receivedAt - sentAt > SLOW_MS) return;
  if (!serverClock.known || Math.abs(offset - serverClock.offsetMs) > JITTER_MS) {
    serverClock.offsetMs = offset;
    serverClock.known = true;
  }
}

/// The gateway's clock minus the PC's, from a `Date` header (whole seconds: its middle is taken)
/// and the request's round trip (its middle too); null without a readable header.
export function offsetFrom(date: string | null, sentAt: number, receivedAt: number): number | null {
  if (!date) return null;
  const server = Date.parse(date);
  if (!Number.isFinite(server)) return null;
  return Math.round(server + 500 - (sentAt + receivedAt) / 2);
}

/// Now, on the gateway's clock (ms since the epoch).
export function serverNow(): number {
  return Date.now() + serverClock.offsetMs;
}

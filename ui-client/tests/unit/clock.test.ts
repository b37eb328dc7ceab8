// The gateway's clock as the console estimates it (src/lib/clock.svelte.ts).
import { test } from "vitest";
import assert from "node:assert/strict";
import { learnClock, offsetFrom, serverClock, serverNow } from "../../src/lib/clock.svelte.ts";

test("the offset is the Date header's middle of second against the round trip's middle", () => {
  const sent = Date.parse("2026-12-06T03:00:00.000Z");
  // The gateway's clock is an hour behind the PC's; the answer took 200 ms.
  assert.equal(offsetFrom("Sun, 06 Dec 2026 02:00:00 GMT", sent, sent + 200), -3_600_000 + 500 - 100);
  assert.equal(offsetFrom(null, sent, sent), null);
  assert.equal(offsetFrom("not a date", sent, sent), null);
});

test("an answer sets the clock; jitter within a second and a half does not move it", () => {
  const now = Date.now();
  const answer = (date: Date) => new Response(null, { headers: { date: date.toUTCString() } });
  learnClock(answer(new Date(now + 9 * 3_600_000)), now, now);
  assert.ok(serverClock.known);
  const first = serverClock.offsetMs;
  assert.ok(Math.abs(first - 9 * 3_600_000) <= 1000, `offset ${first}`);
  learnClock(answer(new Date(now + 9 * 3_600_000 + 1000)), now, now);
  assert.equal(serverClock.offsetMs, first, "a second of jitter is noise");
  assert.ok(Math.abs(serverNow() - (Date.now() + 9 * 3_600_000)) <= 1000);
});

// The drawn zone's geometry (src/lib/geo.ts).
import { test } from "vitest";
import assert from "node:assert/strict";
import { closedRing, inRing } from "../../src/lib/geo.ts";

const square = [
  { lat: 43.6, lon: 3.8 },
  { lat: 43.6, lon: 3.9 },
  { lat: 43.7, lon: 3.9 },
  { lat: 43.7, lon: 3.8 },
];

test("a point is inside a ring or not, closed or open", () => {
  assert.equal(inRing({ lat: 43.65, lon: 3.85 }, square), true);
  assert.equal(inRing({ lat: 43.65, lon: 3.95 }, square), false);
  assert.equal(inRing({ lat: 43.5, lon: 3.85 }, square), false);
  assert.equal(inRing({ lat: 43.65, lon: 3.85 }, closedRing(square)), true);
  // A concave ring: the notch is outside.
  const notched = [...square.slice(0, 2), { lat: 43.65, lon: 3.85 }, ...square.slice(2)];
  assert.equal(inRing({ lat: 43.62, lon: 3.85 }, notched), true);
});

test("a drawn outline is closed once, as a command's ring must be", () => {
  const ring = closedRing(square);
  assert.equal(ring.length, 5);
  assert.deepEqual(ring[4], square[0]);
  assert.equal(closedRing(ring).length, 5, "already closed: unchanged");
  assert.deepEqual(closedRing([]), []);
});

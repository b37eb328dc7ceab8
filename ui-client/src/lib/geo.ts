// Plane geometry for the console's own needs (a zone drawn on the map): at a few kilometres, the
// longitude and latitude degrees may stand for plane coordinates.
import type { LatLon } from "./protocol";

/// Whether a point lies inside a ring (closed or not), by the even-odd rule.
export function inRing(point: LatLon, ring: LatLon[]): boolean {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const a = ring[i]!;
    const b = ring[j]!;
    if (a.lat > point.lat !== b.lat > point.lat && point.lon < ((b.lon - a.lon) * (point.lat - a.lat)) / (b.lat - a.lat) + a.lon) {
      inside = !inside;
    }
  }
  return inside;
}

/// A drawn outline as the closed ring a lighting command takes (its last point its first).
export function closedRing(points: LatLon[]): LatLon[] {
  const first = points[0];
  if (!first) return [];
  const last = points[points.length - 1]!;
  return last.lat === first.lat && last.lon === first.lon ? points : [...points, first];
}

// What an asset's state says, the same on the map and in the panels.
import type { Asset } from "./protocol";

/// A streetlight with a fault reported, or a status other than ok.
export function isFaultyLamp(a: Asset): boolean {
  return a.details.type === "streetlight" && ((a.details.faults?.length ?? 0) > 0 || (!!a.details.status && a.details.status !== "ok"));
}

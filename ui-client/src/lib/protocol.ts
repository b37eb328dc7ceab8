// The live protocol v1 as the console reads it: the gateway's JSON frames. Their types are
// generated from proto::live, the one place that defines them (protocol.generated.ts, checked by
// `cargo test -p proto`); docs/live-protocol.md shows examples. This file names them as the
// console does and adds its helpers.

import type { AlarmState, AssetState, CommandState, KpiState } from "./protocol.generated";
import { DOMAINS, SEVERITIES_ASCENDING } from "./protocol.generated";

export type {
  AlarmComment,
  AssetDetails,
  AuditEntry,
  ClientFrame,
  CommandAction,
  CommandTarget,
  Filter,
  LatLon,
  ReportDetails,
  ServerFrame,
  StreetlightDetails,
  SystemNotice,
  Upstream,
  VehicleDetails,
  WaterSensorDetails,
} from "./protocol.generated";
export { CLOSE_CODES, DOMAINS, KPI_TILES, PROTOCOL_VERSION } from "./protocol.generated";

export type Asset = AssetState;
export type Alarm = AlarmState;
export type Command = CommandState;
export type Kpi = KpiState;

/// Alarm severities, worst first.
export const SEVERITIES: readonly Severity[] = [...SEVERITIES_ASCENDING].reverse();
export type Severity = (typeof SEVERITIES_ASCENDING)[number];
export type Domain = (typeof DOMAINS)[number];

/// Lower is worse.
export function severityRank(severity: string): number {
  const i = (SEVERITIES as readonly string[]).indexOf(severity);
  return i < 0 ? SEVERITIES.length : i;
}

export function assetKey(a: { domain: string; id: string }): string {
  return `${a.domain}/${a.id}`;
}

// The live protocol v1 as the console reads it: the gateway's JSON frames (proto::live in Rust is
// the one place that defines them; docs/live-protocol.md shows examples). Only the fields the
// console uses are typed here.

export type LatLon = { lat: number; lon: number };

export type StreetlightDetails = {
  type: "streetlight";
  lamp_type: string;
  street?: string;
  status: string | null;
  power_state: string | null;
  illuminance_level: number | null;
  power_consumption_w: number | null;
  voltage_v?: number | null;
  faults?: string[];
};

export type VehicleDetails = {
  type: "vehicle";
  label: string;
  trip_id: string;
  route_id: string;
  delay_s: number | null;
  bearing?: number | null;
  speed?: number | null;
  headway_s?: number | null;
  scheduled_headway_s?: number | null;
};

export type ReportDetails = {
  type: "report";
  service_request_id: string;
  service_code: string;
  service_name: string;
  status: string;
  detailed_status: string;
  status_notes: string;
  description: string;
  address: string;
  requested_at: string;
  duplicate_of: string;
  duplicate_count: number;
};

export type WaterSensorDetails = {
  type: "water_sensor";
  element_id: string;
  dma: string;
  measures: Record<string, { value: number; unit: string; observed_at: string }>;
  flags: string[];
};

export type AssetDetails = StreetlightDetails | VehicleDetails | ReportDetails | WaterSensorDetails;

export type Asset = {
  domain: string;
  id: string;
  commune: string;
  position: LatLon | null;
  observed_at: string;
  recorded_at: string;
  details: AssetDetails;
};

export type AlarmComment = { by: string; at: string; text: string };

export type Alarm = {
  key: string;
  domain: string;
  alarm_type: string;
  severity: string;
  commune: string;
  asset_id: string;
  asset_ids: string[];
  position: LatLon | null;
  details: Record<string, string>;
  active: boolean;
  first_raised_at: string;
  last_raised_at: string;
  raise_count: number;
  cleared_at?: string | null;
  acknowledged?: boolean;
  acknowledged_by?: string | null;
  acknowledged_at?: string | null;
  assignee?: string | null;
  shelved_until?: string | null;
  comments?: AlarmComment[];
  closed?: boolean;
  resolved_by?: string | null;
};

export type Kpi = {
  domain: string;
  commune: string;
  at: string;
  values: Record<string, number>;
  history?: { at: string; values: Record<string, number> }[];
};

export type CommandTarget =
  | { type: "streetlight"; id: string }
  | { type: "commune"; commune: string }
  | { type: "street"; name: string }
  | { type: "polygon"; ring: LatLon[] }
  | { type: "valve"; link_id: string };

export type Command = {
  id: string;
  domain: string;
  commune: string;
  target?: CommandTarget;
  action?: { type: string; on?: boolean; level?: number; operation?: string };
  /// `pending`, `applied`, `partially_applied` or `failed`.
  status: string;
  requested_by: string;
  requested_at: string;
  updated_at?: string;
  reason: string;
  lamps_total?: number;
  lamps_applied?: number;
  lamps_failed?: number;
};

export type AuditEntry = {
  seq: number;
  event_id: string;
  at: string;
  actor: string;
  action: string;
  commune: string;
  domain: string;
  target: string;
  details: Record<string, string>;
};

export type Upstream = "live" | "stale";

export type ServerFrame =
  | { v: 1; type: "snapshot"; seq: number; assets: Asset[]; alarms: Alarm[]; commands: Command[]; kpis?: Kpi[] }
  | { v: 1; type: "delta"; seq: number; asset?: Asset; alarm?: Alarm; command?: Command; kpi?: Kpi }
  | { v: 1; type: "resumed"; from: number }
  | { v: 1; type: "heartbeat"; seq: number; upstream: Upstream; notices?: number }
  /// An asset or alarm left the session's scope (moved to another commune, area or severity).
  | { v: 1; type: "removed"; seq: number; asset?: { domain: string; id: string }; alarm?: string }
  | { v: 1; type: "pong" }
  | {
      v: 1;
      type: "error";
      code: "bad_message" | "unsupported_version" | "bad_filter" | "rate_limited";
      message: string;
    };

export const SEVERITIES = ["critical", "major", "minor", "warning"] as const;
export const DOMAINS = ["transport", "lighting", "water", "reports"] as const;
export type Domain = (typeof DOMAINS)[number];

/// Lower is worse.
export function severityRank(severity: string): number {
  const i = (SEVERITIES as readonly string[]).indexOf(severity);
  return i < 0 ? SEVERITIES.length : i;
}

export function assetKey(a: { domain: string; id: string }): string {
  return `${a.domain}/${a.id}`;
}

/// Events the gateway's view could never apply (GET /api/v1/notices): data may be missing.
export type SystemNotice = {
  id: number;
  kind: "events_lost_to_retention" | "stream_recreated" | "view_near_budget";
  at: string;
  from_seq?: number;
  to_seq?: number;
};

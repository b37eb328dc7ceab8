// Generated from proto/src/live.rs by proto::live::typescript (ts-rs): do not edit.
// Rewrite it with `VIGIE_WRITE_GENERATED=1 cargo test -p proto`.

export type ServerFrame = { v: number, } & ({ "type": "snapshot", seq: number, assets: Array<AssetState>, alarms: Array<AlarmState>, commands: Array<CommandState>, kpis: Array<KpiState>, more?: boolean, } | { "type": "delta", seq: number, event: EventSummary, asset?: AssetState | null, alarm?: AlarmState | null, command?: CommandState | null, kpi?: KpiState | null, } | { "type": "removed", seq: number, asset?: AssetRef | null, alarm?: string | null, } | { "type": "resumed", from: number, } | { "type": "heartbeat", seq: number, upstream: Upstream, notices?: number, } | { "type": "pong" } | { "type": "error", code: ErrorCode, message: string, });

export type ServerMessage = { "type": "snapshot", seq: number, assets: Array<AssetState>, alarms: Array<AlarmState>, commands: Array<CommandState>, kpis: Array<KpiState>, more?: boolean, } | { "type": "delta", seq: number, event: EventSummary, asset?: AssetState | null, alarm?: AlarmState | null, command?: CommandState | null, kpi?: KpiState | null, } | { "type": "removed", seq: number, asset?: AssetRef | null, alarm?: string | null, } | { "type": "resumed", from: number, } | { "type": "heartbeat", seq: number, upstream: Upstream, notices?: number, } | { "type": "pong" } | { "type": "error", code: ErrorCode, message: string, };

export type ErrorCode = "bad_message" | "unsupported_version" | "bad_filter" | "rate_limited";

export type AssetRef = { domain: string, id: string, };

export type SystemNotice = { id: number, kind: NoticeKind, 
/**
 * When the gateway found it (RFC 3339).
 */
at: string, 
/**
 * The stream sequences concerned (inclusive); absent for an operator of some communes only
 * (the stream's volume is every commune's).
 */
from_seq?: number | null, to_seq?: number | null, };

export type NoticeKind = "events_lost_to_retention" | "stream_recreated" | "view_near_budget";

export type Upstream = "live" | "stale";

export type Filter = { 
/**
 * INSEE codes.
 */
communes: Array<string>, 
/**
 * `transport`, `lighting`, `water`, `reports`.
 */
domains: Array<string>, 
/**
 * `[west, south, east, north]`, degrees: assets and alarms with a position inside.
 */
bbox: [number, number, number, number] | null, 
/**
 * Alarms at least this severe: `warning`, `minor`, `major`, `critical`.
 */
min_severity: string | null, };

export type ClientFrame = { v: number, } & ({ "type": "ping" } | { "type": "subscribe", filter: Filter, resume_from: number | null, 
/**
 * `false`: every asset update, none coalesced (integrators that need each event; the
 * default, `true`, sends an asset at most about 10 times a second).
 */
coalesce: boolean | null, });

export type ClientMessage = { "type": "ping" } | { "type": "subscribe", filter: Filter, resume_from: number | null, 
/**
 * `false`: every asset update, none coalesced (integrators that need each event; the
 * default, `true`, sends an asset at most about 10 times a second).
 */
coalesce: boolean | null, };

export type EventSummary = { id: string, domain: string, kind: string, commune: string, asset_id: string, 
/**
 * RFC 3339, UTC.
 */
observed_at: string, recorded_at: string, };

export type LatLon = { lat: number, lon: number, };

export type AssetState = { domain: string, id: string, commune: string, position: LatLon | null, 
/**
 * When the latest state was observed in the field (RFC 3339, UTC).
 */
observed_at: string, recorded_at: string, last_event_id: string, details: AssetDetails, };

export type AssetDetails = { "type": "streetlight" } & StreetlightDetails | { "type": "vehicle" } & VehicleDetails | { "type": "report" } & ReportDetails | { "type": "water_sensor" } & WaterSensorDetails;

export type StreetlightDetails = { lamp_type: string, 
/**
 * The street the inventory places it in (a command can target it); empty when unknown.
 */
street: string, 
/**
 * Absent until the first status report.
 */
status: string | null, power_state: string | null, illuminance_level: number | null, power_consumption_w: number | null, voltage_v: number | null, 
/**
 * Active TALQ faults: `lamp_failure`, `dimming_failure`, `relay_failure`, `supply_loss`,
 * `lamp_on_in_daytime`, `low_power_factor`.
 */
faults: Array<string>, 
/**
 * NGSI-LD dateLastSwitchingOn / dateLastSwitchingOff (RFC 3339).
 */
date_last_switching_on: string | null, date_last_switching_off: string | null, };

export type VehicleDetails = { label: string, trip_id: string, route_id: string, direction: number, 
/**
 * Schedule adherence, seconds (positive: late), when known.
 */
delay_s: number | null, bearing: number | null, speed: number | null, current_stop_sequence: number, 
/**
 * Distance from the trip's shape, metres.
 */
offset_m: number, headway_s: number | null, scheduled_headway_s: number | null, };

export type ReportDetails = { service_request_id: string, service_code: string, service_name: string, 
/**
 * Open311 status: `open` or `closed`.
 */
status: string, 
/**
 * The lifecycle state: `open`, `confirmed`, `investigating`, `action_scheduled`,
 * `in_progress`, `fixed`, `closed`, `duplicate`, `not_responsible`.
 */
detailed_status: string, status_notes: string, description: string, address: string, media_url: string, 
/**
 * RFC 3339.
 */
requested_at: string, 
/**
 * The original report, when this one is its duplicate.
 */
duplicate_of: string, duplicate_count: number, 
/**
 * The alarm of another domain this report is about.
 */
linked_alarm_key: string, };

export type WaterSensorDetails = { 
/**
 * The network node or link it sits on.
 */
element_id: string, 
/**
 * Its district metered area.
 */
dma: string, 
/**
 * Measure name (`pressure`, `flow`, `level`, `freeChlorine`, `turbidity`, `pH`,
 * `conductivity`, `temperature`) -> latest value.
 */
measures: { [key in string]: MeasureReading }, 
/**
 * `out_of_range`, `frozen`, `silent`: the latest values are shown but not used by the rules.
 */
flags: Array<string>, };

export type MeasureReading = { value: number, unit: string, 
/**
 * RFC 3339.
 */
observed_at: string, };

export type AlarmState = { key: string, domain: string, alarm_type: string, 
/**
 * `warning`, `minor`, `major` or `critical`.
 */
severity: string, commune: string, asset_id: string, asset_ids: Array<string>, position: LatLon | null, details: { [key in string]: string }, active: boolean, first_raised_at: string, last_raised_at: string, raise_count: number, cleared_at: string | null, clear_reason: string | null, acknowledged: boolean, acknowledged_by: string | null, acknowledged_at: string | null, 
/**
 * The operator in charge, when assigned.
 */
assignee: string | null, 
/**
 * Hidden from the active list until then (RFC 3339); shown again once it has passed.
 */
shelved_until: string | null, comments: Array<AlarmComment>, 
/**
 * It left the view (cleared and acknowledged, or resolved); sent once.
 */
closed: boolean, 
/**
 * Who resolved it, when an operator did.
 */
resolved_by: string | null, };

export type AlarmComment = { by: string, 
/**
 * RFC 3339.
 */
at: string, text: string, };

export type AuditEntry = { 
/**
 * The stream sequence of the event that recorded it (entries are in this order).
 */
seq: number, 
/**
 * The event's id.
 */
event_id: string, 
/**
 * RFC 3339.
 */
at: string, actor: string, 
/**
 * `acknowledge`, `assign`, `comment`, `shelve`, `unshelve`, `resolve` (alarms),
 * `command` (a command requested), `report_status` (a report moved on).
 */
action: string, commune: string, domain: string, 
/**
 * What it was done to: an alarm key, a command id, a report id.
 */
target: string, details: { [key in string]: string }, };

export type KpiState = { domain: string, commune: string, at: string, values: { [key in string]: number }, 
/**
 * The previous values, oldest first (at most 60: an hour at one a minute), for sparklines.
 */
history: Array<KpiSample>, };

export type KpiSample = { at: string, values: { [key in string]: number }, };

export type CommandState = { id: string, domain: string, commune: string, target: CommandTarget, action: CommandAction, requested_by: string, reason: string, requested_at: string, updated_at: string, deadline: string, 
/**
 * `pending`, `applied`, `partially_applied` or `failed`.
 */
status: string, lamps_total: number, lamps_applied: number, lamps_failed: number, failures: Array<string>, };

export type CommandTarget = { "type": "streetlight", id: string, } | { "type": "commune", commune: string, } | { "type": "street", name: string, } | { "type": "polygon", ring: Array<LatLon>, } | { "type": "valve", link_id: string, } | { "type": "unknown" };

export type CommandAction = { "type": "switch", on: boolean, } | { "type": "dim", level: number, } | { "type": "operate_valve", operation: string, } | { "type": "unknown" };

export const PROTOCOL_VERSION = 1;

/// The KPIs the console shows as tiles, in their order.
export const KPI_TILES = ["lighting_availability", "lighting_power", "transport_vehicles", "transport_on_time", "transport_delay", "water_leaks", "water_bursts", "water_night_flow", "reports_open", "reports_received", "reports_median"] as const;

/// The domains whose assets, alarms and KPIs the view holds, in subject order.
export const DOMAINS = ["transport", "lighting", "water", "reports"] as const;

/// Alarm severities, least severe first.
export const SEVERITIES_ASCENDING = ["warning", "minor", "major", "critical"] as const;

/// WebSocket close codes of the protocol.
export const CLOSE_CODES = { TOKEN_EXPIRED: 4001, NO_HEARTBEAT: 4002, REVOKED: 4003, TOO_MANY_SNAPSHOTS: 4029 } as const;

//! The live protocol between the gateway and the console, version 1: JSON text frames over a
//! WebSocket at `/ws`. Documented with examples in `docs/live-protocol.md`.
//!
//! On connect the server sends a `snapshot` (every asset, with the sequence number it is current
//! at), then one `delta` per event, in order, each with a larger `seq`. `seq` is the JetStream
//! sequence of the event, so it only grows, also across gateway restarts.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

pub mod from_proto;
pub mod typescript;

pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

/// Every server frame: `{"v": 1, "type": ..., ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct ServerFrame {
    pub v: u32,
    #[serde(flatten)]
    pub message: ServerMessage,
}

impl ServerFrame {
    pub fn new(message: ServerMessage) -> Self {
        Self { v: PROTOCOL_VERSION, message }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The whole view, current as of `seq`: every asset, the active alarms, the recent commands,
    /// the latest KPIs of each domain and commune. For a client that asked for split snapshots
    /// (`split_snapshots=true`), a large view comes in several `snapshot` frames of the same
    /// `seq`, one after the other: every one but the last says `more`. The client takes the union
    /// of their lists, and replaces what it knew once the last arrives. (Frames of a few KiB keep
    /// the server's per-client buffers small, whatever the view's size.)
    Snapshot {
        seq: u64,
        assets: Vec<AssetState>,
        alarms: Vec<AlarmState>,
        commands: Vec<CommandState>,
        #[serde(default)]
        kpis: Vec<KpiState>,
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    /// One event, and what it changed: an asset, an alarm or a command (exactly one of them).
    Delta {
        seq: u64,
        event: EventSummary,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asset: Option<Box<AssetState>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alarm: Option<Box<AlarmState>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<Box<CommandState>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kpi: Option<Box<KpiState>>,
    },
    /// An asset or an alarm left this session's scope (it moved to a commune, an area or a
    /// severity the session's filter does not take): the client forgets it. Nothing of where it
    /// went is said. Exactly one of `asset` and `alarm`.
    Removed {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asset: Option<AssetRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alarm: Option<String>,
    },
    /// The answer to a `subscribe` with `resume_from`: the deltas after `from` follow, then the
    /// live ones (no snapshot). When the gateway cannot resume it sends a snapshot instead.
    Resumed { from: u64 },
    /// Every few seconds: the sequence the view is current at, and whether the gateway is itself
    /// live (`live`) or cut from the event stream (`stale`: what it shows may be out of date).
    /// `notices`: how many system notices wait for a supervisor (events the view could never
    /// apply; see [`SystemNotice`], `GET /api/v1/notices`); absent when none.
    Heartbeat {
        seq: u64,
        upstream: Upstream,
        #[serde(default, skip_serializing_if = "is_zero")]
        notices: u32,
    },
    /// The answer to a client `ping`.
    Pong,
    /// The client sent something the server does not accept; the connection stays open.
    Error { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, TS)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a message of this protocol.
    BadMessage,
    /// A protocol version the server does not speak.
    UnsupportedVersion,
    /// A `subscribe` whose filter is not acceptable (the message says why); the previous
    /// subscription stays.
    BadFilter,
    /// A `subscribe` past its login's snapshot budget (the message says when to retry); the
    /// previous subscription stays.
    RateLimited,
}

/// Which asset: its domain and id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct AssetRef {
    pub domain: String,
    pub id: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Something the gateway could not do for its view, that operators must know: data the view may
/// lack. Kept until a supervisor acknowledges it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct SystemNotice {
    pub id: u64,
    pub kind: NoticeKind,
    /// When the gateway found it (RFC 3339).
    pub at: String,
    /// The stream sequences concerned (inclusive); absent for an operator of some communes only
    /// (the stream's volume is every commune's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, TS)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The stream's retention dropped events the view never applied: what they changed is missing
    /// from the view until the assets report again.
    EventsLostToRetention,
    /// The events stream was recreated (its store lost): the view was rebuilt from the new one,
    /// which holds only what was published since; the audit log is kept.
    StreamRecreated,
    /// The view nears its size budget (`--view-budget`): the gateway's memory is at stake.
    ViewNearBudget,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, TS)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    Live,
    Stale,
}

/// Close codes the gateway uses (besides 1001 going away and 1009 message too big).
pub mod close_code {
    /// The token expired: refresh it and reconnect (with `resume_from`).
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing heard from the client (not even a WebSocket pong) for too long.
    pub const NO_HEARTBEAT: u16 = 4002;
    /// The session was closed (logout, or the operator removed): log in again.
    pub const REVOKED: u16 = 4003;
    /// The session would start with a snapshot, and its login asked for too many of them
    /// (the reason says when to retry); a resume is not counted.
    pub const TOO_MANY_SNAPSHOTS: u16 = 4029;
}

/// What a session receives: everything when empty. Each non-empty list narrows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// INSEE codes.
    #[serde(default)]
    pub communes: Vec<String>,
    /// `transport`, `lighting`, `water`, `reports`.
    #[serde(default)]
    pub domains: Vec<String>,
    /// `[west, south, east, north]`, degrees: assets and alarms with a position inside.
    #[serde(default)]
    pub bbox: Option<[f64; 4]>,
    /// Alarms at least this severe: `warning`, `minor`, `major`, `critical`.
    #[serde(default)]
    pub min_severity: Option<String>,
}

/// The console's KPI tiles (`ui-client/src/lib/kpis.ts` computes them from the KPIs' values),
/// by which the gateway's KPI targets are named (`--kpi-targets`).
pub const KPI_TILES: [&str; 11] = [
    "lighting_availability",
    "lighting_power",
    "transport_vehicles",
    "transport_on_time",
    "transport_delay",
    "water_leaks",
    "water_bursts",
    "water_night_flow",
    "reports_open",
    "reports_received",
    "reports_median",
];

/// Severities from the least to the most urgent.
pub const SEVERITIES: [&str; 4] = ["warning", "minor", "major", "critical"];

impl Filter {
    /// Checks the filter's values; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.communes.len() > 1000 || self.domains.len() > 10 {
            return Err("at most 1000 communes and 10 domains".into());
        }
        for c in &self.communes {
            crate::ids::CommuneId::parse(c).map_err(|e| e.to_string())?;
        }
        for d in &self.domains {
            if crate::v1::Domain::from_token(d).is_none_or(|d| d == crate::v1::Domain::Ops) {
                return Err(format!(
                    "unknown domain {:?} (transport, lighting, water, reports)",
                    d.chars().take(32).collect::<String>()
                ));
            }
        }
        if let Some([w, s, e, n]) = self.bbox {
            let ok = [w, s, e, n].iter().all(|v| v.is_finite())
                && (-180.0..=180.0).contains(&w)
                && (-180.0..=180.0).contains(&e)
                && (-90.0..=90.0).contains(&s)
                && (-90.0..=90.0).contains(&n)
                && w < e
                && s < n;
            if !ok {
                return Err("bbox is [west, south, east, north] in degrees, west < east and south < north".into());
            }
        }
        if let Some(m) = &self.min_severity
            && !SEVERITIES.contains(&m.as_str())
        {
            return Err("min_severity is one of warning, minor, major, critical".into());
        }
        Ok(())
    }

    fn place(&self, commune: &str, domain: &str) -> bool {
        (self.communes.is_empty() || self.communes.iter().any(|c| c == commune))
            && (self.domains.is_empty() || self.domains.iter().any(|d| d == domain))
    }

    fn inside(&self, position: Option<&LatLon>) -> bool {
        match (self.bbox, position) {
            (None, _) => true,
            (Some([w, s, e, n]), Some(p)) => p.lon >= w && p.lon <= e && p.lat >= s && p.lat <= n,
            (Some(_), None) => false,
        }
    }

    pub fn allows_asset(&self, a: &AssetState) -> bool {
        self.allows_place(&a.domain, &a.commune, a.position.as_ref(), None)
    }

    pub fn allows_alarm(&self, a: &AlarmState) -> bool {
        self.allows_place(&a.domain, &a.commune, a.position.as_ref(), Some(&a.severity))
    }

    /// Whether an object of this domain, commune, position and (for an alarm) severity is in
    /// the session's scope.
    pub fn allows_place(&self, domain: &str, commune: &str, position: Option<&LatLon>, severity: Option<&str>) -> bool {
        let rank = |s: &str| SEVERITIES.iter().position(|x| *x == s);
        self.place(commune, domain)
            && self.inside(position)
            && severity
                .is_none_or(|severity| self.min_severity.as_deref().is_none_or(|min| rank(severity) >= rank(min)))
    }

    pub fn allows_command(&self, c: &CommandState) -> bool {
        self.place(&c.commune, &c.domain)
    }

    pub fn allows_kpi(&self, k: &KpiState) -> bool {
        self.place(&k.commune, &k.domain)
    }
}

/// Every client frame: `{"v": 1, "type": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct ClientFrame {
    pub v: u32,
    #[serde(flatten)]
    pub message: ClientMessage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Ping,
    /// Replaces the session's subscription. Without `resume_from`: a snapshot under the filter,
    /// then its deltas. With it (the last `seq` the client received): the deltas it missed
    /// (`resumed`), or a snapshot when the gateway no longer has them all.
    Subscribe {
        #[serde(default)]
        filter: Filter,
        #[serde(default)]
        resume_from: Option<u64>,
        /// `false`: every asset update, none coalesced (integrators that need each event; the
        /// default, `true`, sends an asset at most about 10 times a second).
        #[serde(default)]
        coalesce: Option<bool>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct EventSummary {
    pub id: String,
    pub domain: String,
    pub kind: String,
    pub commune: String,
    pub asset_id: String,
    /// RFC 3339, UTC.
    pub observed_at: String,
    pub recorded_at: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, TS)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// The latest known state of one asset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct AssetState {
    pub domain: String,
    pub id: String,
    pub commune: String,
    pub position: Option<LatLon>,
    /// When the latest state was observed in the field (RFC 3339, UTC).
    pub observed_at: String,
    pub recorded_at: String,
    pub last_event_id: String,
    pub details: AssetDetails,
}

/// Domain-specific attributes, tagged by asset type. More types come with each domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AssetDetails {
    Streetlight(StreetlightDetails),
    Vehicle(VehicleDetails),
    Report(ReportDetails),
    WaterSensor(WaterSensorDetails),
}

/// A water network sensor: its latest value of each measure, and its data-quality flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
pub struct WaterSensorDetails {
    /// The network node or link it sits on.
    pub element_id: String,
    /// Its district metered area.
    pub dma: String,
    /// Measure name (`pressure`, `flow`, `level`, `freeChlorine`, `turbidity`, `pH`,
    /// `conductivity`, `temperature`) -> latest value.
    pub measures: std::collections::BTreeMap<String, MeasureReading>,
    /// `out_of_range`, `frozen`, `silent`: the latest values are shown but not used by the rules.
    #[serde(default)]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
pub struct MeasureReading {
    pub value: f64,
    pub unit: String,
    /// RFC 3339.
    pub observed_at: String,
}

/// A citizen report (Open311 service request), without its reporter's contact.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
pub struct ReportDetails {
    pub service_request_id: String,
    pub service_code: String,
    pub service_name: String,
    /// Open311 status: `open` or `closed`.
    pub status: String,
    /// The lifecycle state: `open`, `confirmed`, `investigating`, `action_scheduled`,
    /// `in_progress`, `fixed`, `closed`, `duplicate`, `not_responsible`.
    pub detailed_status: String,
    pub status_notes: String,
    pub description: String,
    pub address: String,
    pub media_url: String,
    /// RFC 3339.
    pub requested_at: String,
    /// The original report, when this one is its duplicate.
    pub duplicate_of: String,
    pub duplicate_count: u32,
    /// The alarm of another domain this report is about.
    pub linked_alarm_key: String,
}

/// A vehicle in service (GTFS-Realtime VehiclePosition, plus what the service derives).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
pub struct VehicleDetails {
    pub label: String,
    pub trip_id: String,
    pub route_id: String,
    pub direction: u32,
    /// Schedule adherence, seconds (positive: late), when known.
    pub delay_s: Option<f64>,
    pub bearing: Option<f32>,
    pub speed: Option<f32>,
    pub current_stop_sequence: u32,
    /// Distance from the trip's shape, metres.
    pub offset_m: f64,
    pub headway_s: Option<f64>,
    pub scheduled_headway_s: Option<f64>,
}

/// NGSI-LD `Streetlight` attributes; values use the NGSI-LD vocabulary
/// (`ok`, `defectiveLamp`, `brokenLantern`, `columnIssue`; `on`, `off`, `low`, `bootingUp`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, TS)]
pub struct StreetlightDetails {
    pub lamp_type: String,
    /// The street the inventory places it in (a command can target it); empty when unknown.
    #[serde(default)]
    pub street: String,
    /// Absent until the first status report.
    pub status: Option<String>,
    pub power_state: Option<String>,
    pub illuminance_level: Option<f64>,
    pub power_consumption_w: Option<f64>,
    pub voltage_v: Option<f64>,
    /// Active TALQ faults: `lamp_failure`, `dimming_failure`, `relay_failure`, `supply_loss`,
    /// `lamp_on_in_daytime`, `low_power_factor`.
    #[serde(default)]
    pub faults: Vec<String>,
    /// NGSI-LD dateLastSwitchingOn / dateLastSwitchingOff (RFC 3339).
    #[serde(default)]
    pub date_last_switching_on: Option<String>,
    #[serde(default)]
    pub date_last_switching_off: Option<String>,
}

/// An alarm as the operator sees it (ThingsBoard's lifecycle: active or cleared, acknowledged or
/// not). Raising the same key again updates it (`raise_count`, `last_raised_at`) and makes it
/// active again. A cleared alarm stays until an operator acknowledges it; it is then sent once
/// with `closed: true` and leaves the view, as does an alarm an operator resolves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct AlarmState {
    pub key: String,
    pub domain: String,
    pub alarm_type: String,
    /// `warning`, `minor`, `major` or `critical`.
    pub severity: String,
    pub commune: String,
    pub asset_id: String,
    pub asset_ids: Vec<String>,
    pub position: Option<LatLon>,
    pub details: std::collections::BTreeMap<String, String>,
    pub active: bool,
    pub first_raised_at: String,
    pub last_raised_at: String,
    pub raise_count: u32,
    pub cleared_at: Option<String>,
    pub clear_reason: Option<String>,
    #[serde(default)]
    pub acknowledged: bool,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    #[serde(default)]
    pub acknowledged_at: Option<String>,
    /// The operator in charge, when assigned.
    #[serde(default)]
    pub assignee: Option<String>,
    /// Hidden from the active list until then (RFC 3339); shown again once it has passed.
    #[serde(default)]
    pub shelved_until: Option<String>,
    #[serde(default)]
    pub comments: Vec<AlarmComment>,
    /// It left the view (cleared and acknowledged, or resolved); sent once.
    #[serde(default)]
    pub closed: bool,
    /// Who resolved it, when an operator did.
    #[serde(default)]
    pub resolved_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct AlarmComment {
    pub by: String,
    /// RFC 3339.
    pub at: String,
    pub text: String,
}

/// One entry of the audit log: an operator action (on an alarm, a command, a report), as the
/// stream recorded it. Queryable over REST (`/api/v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct AuditEntry {
    /// The stream sequence of the event that recorded it (entries are in this order).
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// RFC 3339.
    pub at: String,
    pub actor: String,
    /// `acknowledge`, `assign`, `comment`, `shelve`, `unshelve`, `resolve` (alarms),
    /// `command` (a command requested), `report_status` (a report moved on).
    pub action: String,
    pub commune: String,
    pub domain: String,
    /// What it was done to: an alarm key, a command id, a report id.
    pub target: String,
    pub details: std::collections::BTreeMap<String, String>,
}

/// The latest KPIs of one domain in one commune. Lighting: `lamps_total`, `lamps_dark`,
/// `availability` (0..1), `power_w`, `energy_wh_current_hour`, `energy_wh_previous_hour`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct KpiState {
    pub domain: String,
    pub commune: String,
    pub at: String,
    pub values: std::collections::BTreeMap<String, f64>,
    /// The previous values, oldest first (at most 60: an hour at one a minute), for sparklines.
    #[serde(default)]
    pub history: Vec<KpiSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct KpiSample {
    pub at: String,
    pub values: std::collections::BTreeMap<String, f64>,
}

/// An operator command to a domain service, from pending to its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct CommandState {
    pub id: String,
    pub domain: String,
    pub commune: String,
    pub target: CommandTarget,
    pub action: CommandAction,
    pub requested_by: String,
    pub reason: String,
    pub requested_at: String,
    pub updated_at: String,
    pub deadline: String,
    /// `pending`, `applied`, `partially_applied` or `failed`.
    pub status: String,
    pub lamps_total: u32,
    pub lamps_applied: u32,
    pub lamps_failed: u32,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandTarget {
    Streetlight {
        id: String,
    },
    Commune {
        commune: String,
    },
    Street {
        name: String,
    },
    Polygon {
        ring: Vec<LatLon>,
    },
    /// The valve on a water network link (a valve, or a pipe's isolation valve).
    Valve {
        link_id: String,
    },
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandAction {
    Switch {
        on: bool,
    },
    Dim {
        level: f64,
    },
    /// `close` or `open`.
    OperateValve {
        operation: String,
    },
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_version_and_a_type() {
        let json = serde_json::to_value(ServerFrame::new(ServerMessage::Pong)).unwrap();
        assert_eq!(json, serde_json::json!({"v": 1, "type": "pong"}));
        let ping: ClientFrame = serde_json::from_str(r#"{"v":1,"type":"ping"}"#).unwrap();
        assert_eq!(ping.message, ClientMessage::Ping);
        assert!(serde_json::from_str::<ClientFrame>(r#"{"v":1,"type":"dance"}"#).is_err());
    }
}

//! The live vocabulary spelled from the contract's messages: a command's, an event's and an
//! asset's live shape, the audit entry an operator's act makes, and the names the console reads
//! for the protobuf enums (severities, TALQ faults, NGSI-LD lamp states). Pure: the gateway's
//! view and its REST and gRPC faces call these, and nothing else spells them.

use super::{AssetDetails, AssetState, AuditEntry, CommandAction, CommandState, CommandTarget, EventSummary, LatLon};
use crate::event::CheckedEvent;
use crate::lighting::{CommandStatus, LampStatus, LightingCommand, PowerState, TalqFault};
use crate::ops::AlarmActionKind;
use crate::v1::Severity;
use crate::v1::event::Payload;

pub fn valve_command(domain: &str, c: &crate::water::ValveCommand) -> CommandState {
    use crate::water::{ValveAction, ValveCommandStatus};
    let operation = match ValveAction::try_from(c.action) {
        Ok(ValveAction::Close) => "close",
        Ok(ValveAction::Open) => "open",
        Ok(ValveAction::Unspecified) | Err(_) => "unknown",
    };
    let status = match ValveCommandStatus::try_from(c.status) {
        Ok(ValveCommandStatus::Pending) => "pending",
        Ok(ValveCommandStatus::Applied) => "applied",
        Ok(ValveCommandStatus::Failed) => "failed",
        Ok(ValveCommandStatus::Unspecified) | Err(_) => "unknown",
    };
    CommandState {
        id: c.id.clone(),
        domain: domain.to_owned(),
        commune: c.commune.clone(),
        target: CommandTarget::Valve { link_id: c.link_id.clone() },
        action: CommandAction::OperateValve { operation: operation.to_owned() },
        requested_by: c.requested_by.clone(),
        reason: c.reason.clone(),
        requested_at: rfc3339(c.requested_at.as_ref()),
        updated_at: rfc3339(c.updated_at.as_ref()),
        deadline: rfc3339(c.deadline.as_ref()),
        status: status.to_owned(),
        lamps_total: 0,
        lamps_applied: 0,
        lamps_failed: 0,
        failures: if c.failure.is_empty() { Vec::new() } else { vec![c.failure.clone()] },
    }
}

pub fn lighting_command(domain: &str, c: &LightingCommand) -> CommandState {
    use crate::lighting::command_action::Action;
    use crate::lighting::command_target::Target;
    let target = match c.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(Target::StreetlightId(id)) => CommandTarget::Streetlight { id: id.clone() },
        Some(Target::Commune(commune)) => CommandTarget::Commune { commune: commune.clone() },
        Some(Target::Street(name)) => CommandTarget::Street { name: name.clone() },
        Some(Target::Polygon(p)) => {
            CommandTarget::Polygon { ring: p.ring.iter().map(|p| LatLon { lat: p.lat, lon: p.lon }).collect() }
        }
        None => CommandTarget::Unknown,
    };
    let action = match c.action.as_ref().and_then(|a| a.action.as_ref()) {
        Some(Action::SwitchOn(on)) => CommandAction::Switch { on: *on },
        Some(Action::DimLevel(level)) => CommandAction::Dim { level: *level },
        None => CommandAction::Unknown,
    };
    let status = match CommandStatus::try_from(c.status) {
        Ok(CommandStatus::Pending) => "pending",
        Ok(CommandStatus::Applied) => "applied",
        Ok(CommandStatus::PartiallyApplied) => "partially_applied",
        Ok(CommandStatus::Failed) => "failed",
        Ok(CommandStatus::Unspecified) | Err(_) => "unknown",
    };
    CommandState {
        id: c.id.clone(),
        domain: domain.to_owned(),
        commune: c.commune.clone(),
        target,
        action,
        requested_by: c.requested_by.clone(),
        reason: c.reason.clone(),
        requested_at: rfc3339(c.requested_at.as_ref()),
        updated_at: rfc3339(c.updated_at.as_ref()),
        deadline: rfc3339(c.deadline.as_ref()),
        status: status.to_owned(),
        lamps_total: c.lamps_total,
        lamps_applied: c.lamps_applied,
        lamps_failed: c.lamps_failed,
        failures: c.failures.clone(),
    }
}

/// The audit entry an event makes, if it records an operator's act: an alarm action, a log book
/// entry (`note`), a command requested, a report's status changed by someone other than the
/// citizen.
pub fn audit_entry(summary: &EventSummary, event: &CheckedEvent, seq: u64) -> Option<AuditEntry> {
    let entry = |actor: &str, action: &str, target: &str, details: Vec<(&str, String)>| AuditEntry {
        seq,
        event_id: summary.id.clone(),
        at: summary.observed_at.clone(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        commune: summary.commune.clone(),
        domain: summary.domain.clone(),
        target: target.to_owned(),
        details: details.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    match event.payload() {
        Payload::AlarmAction(a) => {
            let action = match AlarmActionKind::try_from(a.action).ok()? {
                AlarmActionKind::Acknowledge => "acknowledge",
                AlarmActionKind::Assign => "assign",
                AlarmActionKind::Comment => "comment",
                AlarmActionKind::Shelve => "shelve",
                AlarmActionKind::Unshelve => "unshelve",
                AlarmActionKind::Resolve => "resolve",
                AlarmActionKind::Unspecified => return None,
            };
            let until = a.shelved_until.as_ref().map(|t| rfc3339(Some(t))).unwrap_or_default();
            Some(entry(
                &a.actor,
                action,
                &a.alarm_key,
                vec![("assignee", a.assignee.clone()), ("comment", a.comment.clone()), ("shelved_until", until)],
            ))
        }
        Payload::LogbookEntry(e) => Some(entry(&e.actor, "note", "logbook", vec![("text", e.text.clone())])),
        // A command's first event: requested, nothing confirmed yet.
        Payload::LightingCommand(c)
            if c.status == CommandStatus::Pending as i32 && c.lamps_applied + c.lamps_failed == 0 =>
        {
            let state = lighting_command(&summary.domain, c);
            let details = vec![
                ("target", serde_json::to_string(&state.target).unwrap_or_default()),
                ("action", serde_json::to_string(&state.action).unwrap_or_default()),
                ("reason", c.reason.clone()),
            ];
            Some(entry(&c.requested_by, "command", &c.id, details))
        }
        Payload::ValveCommand(c) if c.status == crate::water::ValveCommandStatus::Pending as i32 => {
            let state = valve_command(&summary.domain, c);
            let details = vec![
                ("target", serde_json::to_string(&state.target).unwrap_or_default()),
                ("action", serde_json::to_string(&state.action).unwrap_or_default()),
                ("reason", c.reason.clone()),
            ];
            Some(entry(&c.requested_by, "command", &c.id, details))
        }
        Payload::ReportUpdated(crate::reports::ReportUpdated { request: Some(r), change: Some(change) })
            if change.actor != "citizen" =>
        {
            let token = |s: i32| crate::reports::ReportStatus::try_from(s).unwrap_or_default().token().to_owned();
            let details = vec![("from", token(change.from)), ("to", token(change.to)), ("note", change.note.clone())];
            Some(entry(&change.actor, "report_status", &r.service_request_id, details))
        }
        _ => None,
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so the strings order like the times.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// An asset's state as the event tells it.
pub fn asset(summary: &EventSummary, event: &CheckedEvent, details: AssetDetails) -> AssetState {
    AssetState {
        domain: summary.domain.clone(),
        id: summary.asset_id.clone(),
        commune: summary.commune.clone(),
        position: event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon }),
        observed_at: summary.observed_at.clone(),
        recorded_at: summary.recorded_at.clone(),
        last_event_id: summary.id.clone(),
        details,
    }
}

pub fn event_summary(event: &CheckedEvent) -> EventSummary {
    EventSummary {
        id: event.event.id.clone(),
        domain: event.domain().token().to_owned(),
        kind: event.kind.token().to_owned(),
        commune: event.commune.to_string(),
        asset_id: event.asset_id.to_string(),
        observed_at: rfc3339(event.event.observed_at.as_ref()),
        recorded_at: rfc3339(event.event.recorded_at.as_ref()),
    }
}

pub fn severity_name(value: i32) -> &'static str {
    match Severity::try_from(value) {
        Ok(Severity::Warning) => "warning",
        Ok(Severity::Minor) => "minor",
        Ok(Severity::Major) => "major",
        Ok(Severity::Critical) => "critical",
        Ok(Severity::Unspecified) | Err(_) => "indeterminate",
    }
}

pub fn talq_fault_name(value: i32) -> &'static str {
    match TalqFault::try_from(value) {
        Ok(TalqFault::LampFailure) => "lamp_failure",
        Ok(TalqFault::DimmingFailure) => "dimming_failure",
        Ok(TalqFault::RelayFailure) => "relay_failure",
        Ok(TalqFault::SupplyLoss) => "supply_loss",
        Ok(TalqFault::LampOnInDaytime) => "lamp_on_in_daytime",
        Ok(TalqFault::LowPowerFactor) => "low_power_factor",
        Ok(TalqFault::Unspecified) | Err(_) => "unknown",
    }
}

/// NGSI-LD Streetlight `status` values.
pub fn lamp_status_name(value: i32) -> &'static str {
    match LampStatus::try_from(value) {
        Ok(LampStatus::Ok) => "ok",
        Ok(LampStatus::DefectiveLamp) => "defectiveLamp",
        Ok(LampStatus::BrokenLantern) => "brokenLantern",
        Ok(LampStatus::ColumnIssue) => "columnIssue",
        Ok(LampStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// NGSI-LD Streetlight `powerState` values.
pub fn power_state_name(value: i32) -> &'static str {
    match PowerState::try_from(value) {
        Ok(PowerState::On) => "on",
        Ok(PowerState::Off) => "off",
        Ok(PowerState::Low) => "low",
        Ok(PowerState::BootingUp) => "bootingUp",
        Ok(PowerState::Unspecified) | Err(_) => "unknown",
    }
}

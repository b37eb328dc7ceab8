//! The operations view, pure: the latest state of every asset, built by applying checked events in
//! stream order. No I/O here; the consumer feeds it and the store persists what it changed.

use proto::event::CheckedEvent;
use proto::lighting::{LampStatus, PowerState};
use proto::live::{AssetDetails, AssetState, EventSummary, LatLon, StreetlightDetails};
use proto::v1::event::Payload;
use std::collections::HashMap;

/// `domain/asset id`: asset ids are unique within a domain.
pub fn asset_key(domain: &str, id: &str) -> String {
    format!("{domain}/{id}")
}

#[derive(Debug, Default)]
pub struct OperationsView {
    assets: HashMap<String, AssetState>,
    /// Stream sequence of the last event applied (or refused): every event up to it is in the view.
    applied_seq: u64,
}

/// What applying one event changed.
pub struct Applied {
    pub key: String,
    pub event: EventSummary,
    pub asset: AssetState,
}

impl OperationsView {
    pub fn restore(assets: HashMap<String, AssetState>, applied_seq: u64) -> Self {
        OperationsView { assets, applied_seq }
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn asset_count(&self) -> usize {
        self.assets.len()
    }

    pub fn assets(&self) -> impl Iterator<Item = &AssetState> {
        self.assets.values()
    }

    /// Marks an event that could not be applied (undecodable, inconsistent) as passed.
    pub fn skip(&mut self, seq: u64) {
        self.applied_seq = self.applied_seq.max(seq);
    }

    /// Applies the event at stream sequence `seq`. Events at or below the applied sequence were
    /// applied already (a redelivery) and are ignored: `None`.
    pub fn apply(&mut self, event: &CheckedEvent, seq: u64) -> Option<Applied> {
        if seq <= self.applied_seq {
            return None;
        }
        self.applied_seq = seq;
        let summary = summary(event);
        let key = asset_key(&summary.domain, &summary.asset_id);
        let position = event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon });
        let asset = self.assets.entry(key.clone()).or_insert_with(|| AssetState {
            domain: summary.domain.clone(),
            id: summary.asset_id.clone(),
            commune: summary.commune.clone(),
            position,
            observed_at: summary.observed_at.clone(),
            recorded_at: summary.recorded_at.clone(),
            last_event_id: summary.id.clone(),
            details: initial_details(event.payload()),
        });
        match event.payload() {
            Payload::StreetlightRegistered(registered) => {
                if let Some(light) = &registered.streetlight {
                    asset.commune = summary.commune.clone();
                    asset.position = position;
                    if let AssetDetails::Streetlight(details) = &mut asset.details {
                        details.lamp_type = light.lamp_type.clone();
                    }
                    asset.last_event_id = summary.id.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                }
            }
            Payload::StreetlightStatus(status) => {
                // A late report (observed before the current state) is an event, not a new state.
                // Before the first report, `observed_at` is the registration's and does not count.
                let first_report = matches!(&asset.details, AssetDetails::Streetlight(d) if d.status.is_none());
                if let Some(report) = &status.report
                    && (first_report || summary.observed_at >= asset.observed_at)
                {
                    if let AssetDetails::Streetlight(details) = &mut asset.details {
                        details.status = Some(lamp_status_name(report.status).to_owned());
                        details.power_state = Some(power_state_name(report.power_state).to_owned());
                        details.illuminance_level = Some(report.illuminance_level);
                        details.power_consumption_w = Some(report.power_consumption_w);
                        details.voltage_v = report.voltage_v;
                    }
                    asset.observed_at = summary.observed_at.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                    asset.last_event_id = summary.id.clone();
                    if position.is_some() {
                        asset.position = position;
                    }
                }
            }
        }
        Some(Applied { key, asset: asset.clone(), event: summary })
    }
}

fn initial_details(payload: &Payload) -> AssetDetails {
    match payload {
        Payload::StreetlightRegistered(_) | Payload::StreetlightStatus(_) => {
            AssetDetails::Streetlight(StreetlightDetails::default())
        }
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so the strings order like the times.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn summary(event: &CheckedEvent) -> EventSummary {
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

/// NGSI-LD Streetlight `status` values.
fn lamp_status_name(value: i32) -> &'static str {
    match LampStatus::try_from(value) {
        Ok(LampStatus::Ok) => "ok",
        Ok(LampStatus::DefectiveLamp) => "defectiveLamp",
        Ok(LampStatus::BrokenLantern) => "brokenLantern",
        Ok(LampStatus::ColumnIssue) => "columnIssue",
        Ok(LampStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// NGSI-LD Streetlight `powerState` values.
fn power_state_name(value: i32) -> &'static str {
    match PowerState::try_from(value) {
        Ok(PowerState::On) => "on",
        Ok(PowerState::Off) => "off",
        Ok(PowerState::Low) => "low",
        Ok(PowerState::BootingUp) => "bootingUp",
        Ok(PowerState::Unspecified) | Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::{check, new_event};
    use proto::ids::{AssetId, CommuneId};
    use proto::lighting::{StatusReport, Streetlight, StreetlightRegistered, StreetlightStatusReported};
    use proto::v1::Position;
    use std::time::{Duration, SystemTime};

    fn registered() -> CheckedEvent {
        let light = Streetlight {
            id: "EP1".into(),
            commune: "34172".into(),
            lat: 43.6,
            lon: 3.88,
            lamp_type: "LANTERNE".into(),
        };
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            SystemTime::UNIX_EPOCH.into(),
            Some(Position { lat: 43.6, lon: 3.88 }),
            Payload::StreetlightRegistered(StreetlightRegistered { streetlight: Some(light) }),
        ))
        .unwrap()
    }

    fn status(at_secs: u64, level: f64) -> CheckedEvent {
        let at: prost_types::Timestamp = (SystemTime::UNIX_EPOCH + Duration::from_secs(at_secs)).into();
        let report = StatusReport {
            streetlight_id: "EP1".into(),
            observed_at: Some(at),
            status: LampStatus::DefectiveLamp as i32,
            power_state: PowerState::Low as i32,
            illuminance_level: level,
            power_consumption_w: 12.0,
            voltage_v: None,
        };
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            at,
            Some(Position { lat: 43.6, lon: 3.88 }),
            Payload::StreetlightStatus(StreetlightStatusReported { report: Some(report) }),
        ))
        .unwrap()
    }

    fn details(a: &AssetState) -> &StreetlightDetails {
        let AssetDetails::Streetlight(d) = &a.details else { panic!("not a streetlight") };
        d
    }

    #[test]
    fn latest_observation_wins_and_redeliveries_are_ignored() {
        let mut view = OperationsView::default();
        let a = view.apply(&registered(), 1).unwrap();
        assert_eq!(details(&a.asset).lamp_type, "LANTERNE");
        assert_eq!(details(&a.asset).status, None);
        let b = view.apply(&status(2_000, 0.3), 2).unwrap();
        assert_eq!(details(&b.asset).status.as_deref(), Some("defectiveLamp"));
        assert_eq!(details(&b.asset).power_state.as_deref(), Some("low"));
        assert_eq!(details(&b.asset).lamp_type, "LANTERNE");
        // Late report: delivered as an event, state unchanged.
        let late = view.apply(&status(1_000, 0.9), 3).unwrap();
        assert_eq!(late.event.observed_at, "1970-01-01T00:16:40.000000000Z");
        assert_eq!(details(&late.asset).illuminance_level, Some(0.3));
        // Redelivery of an applied sequence.
        assert!(view.apply(&status(3_000, 1.0), 3).is_none());
        assert_eq!(view.applied_seq(), 3);
        assert_eq!(view.asset_count(), 1);
        view.skip(10);
        assert!(view.apply(&status(3_000, 1.0), 9).is_none());
    }
}

//! The assets in the operations view, as their events tell them: streetlights (registered,
//! status, faults), vehicles, citizen reports and water sensors.

use super::*;

impl OperationsView {
    pub(super) fn asset(&mut self, summary: &EventSummary, event: &CheckedEvent) -> Change {
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
            details: AssetDetails::Streetlight(StreetlightDetails::default()),
        });
        let AssetDetails::Streetlight(details) = &mut asset.details else {
            return Change::Asset(key, asset.clone());
        };
        match event.payload() {
            Payload::StreetlightRegistered(registered) => {
                if let Some(light) = &registered.streetlight {
                    asset.commune = summary.commune.clone();
                    asset.position = position;
                    details.lamp_type = light.lamp_type.clone();
                    details.street = light.street.clone();
                    asset.last_event_id = summary.id.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                }
            }
            Payload::StreetlightStatus(status) => {
                // A late report (observed before the current state) is an event, not a new state.
                // Before the first report, `observed_at` is the registration's and does not count.
                let first_report = details.status.is_none();
                if let Some(report) = &status.report
                    && (first_report || summary.observed_at >= asset.observed_at)
                {
                    details.status = Some(live::lamp_status_name(report.status).to_owned());
                    details.power_state = Some(live::power_state_name(report.power_state).to_owned());
                    details.illuminance_level = Some(report.illuminance_level);
                    details.power_consumption_w = Some(report.power_consumption_w);
                    details.voltage_v = report.voltage_v;
                    details.date_last_switching_on =
                        status.date_last_switching_on.as_ref().map(|t| live::rfc3339(Some(t)));
                    details.date_last_switching_off =
                        status.date_last_switching_off.as_ref().map(|t| live::rfc3339(Some(t)));
                    asset.observed_at = summary.observed_at.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                    asset.last_event_id = summary.id.clone();
                    if position.is_some() {
                        asset.position = position;
                    }
                }
            }
            Payload::StreetlightFault(fault) => {
                if let Some(fault) = &fault.fault {
                    let name = live::talq_fault_name(fault.fault).to_owned();
                    details.faults.retain(|f| f != &name);
                    if fault.active {
                        details.faults.push(name);
                        details.faults.sort();
                    }
                    asset.last_event_id = summary.id.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                }
            }
            _ => {}
        }
        Change::Asset(key, asset.clone())
    }

    pub(super) fn vehicle(
        &mut self,
        summary: &EventSummary,
        event: &CheckedEvent,
        moved: &proto::transport::VehicleMoved,
    ) -> Change {
        let key = asset_key(&summary.domain, &summary.asset_id);
        let state = moved.state.clone().unwrap_or_default();
        let position = state.position.clone().unwrap_or_default();
        let details = VehicleDetails {
            label: position.vehicle_label.clone(),
            trip_id: position.trip_id.clone(),
            route_id: state.route_id.clone(),
            direction: state.direction,
            delay_s: state.delay_s,
            bearing: position.bearing,
            speed: position.speed,
            current_stop_sequence: position.current_stop_sequence,
            offset_m: state.offset_m,
            headway_s: state.headway_s,
            scheduled_headway_s: state.scheduled_headway_s,
        };
        let asset = live::asset(summary, event, AssetDetails::Vehicle(details));
        // The latest observation wins; a late position is an event, not a new state.
        match self.assets.get(&key) {
            Some(current) if current.observed_at > asset.observed_at => Change::Asset(key, current.clone()),
            _ => {
                self.assets.insert(key.clone(), asset.clone());
                Change::Asset(key, asset)
            }
        }
    }

    pub(super) fn report(
        &mut self,
        summary: &EventSummary,
        event: &CheckedEvent,
        r: &proto::reports::ServiceRequest,
    ) -> Change {
        let key = asset_key(&summary.domain, &summary.asset_id);
        let status = proto::reports::ReportStatus::try_from(r.status).unwrap_or_default();
        let details = ReportDetails {
            service_request_id: r.service_request_id.clone(),
            service_code: r.service_code.clone(),
            service_name: r.service_name.clone(),
            status: status.open311().to_owned(),
            detailed_status: status.token().to_owned(),
            status_notes: r.status_notes.clone(),
            description: r.description.clone(),
            address: r.address.clone(),
            media_url: r.media_url.clone(),
            requested_at: live::rfc3339(r.requested_datetime.as_ref()),
            duplicate_of: r.duplicate_of.clone(),
            duplicate_count: r.duplicate_count,
            linked_alarm_key: r.linked_alarm_key.clone(),
        };
        let asset = live::asset(summary, event, AssetDetails::Report(details));
        if let Some(at) = self.closed_at.remove(&key) {
            self.closed_reports.remove(&(at, key.clone()));
        }
        if is_closed_report(&asset) {
            // The stream's clock; a view restored from its store has its reports' recorded
            // times instead, close enough.
            let at = if self.stream_time > 0 { self.stream_time } else { unix_seconds(&asset.recorded_at) };
            self.closed_at.insert(key.clone(), at);
            self.closed_reports.insert((at, key.clone()));
        }
        self.assets.insert(key.clone(), asset.clone());
        Change::Asset(key, asset)
    }

    /// A water sensor's reading: its measure's latest value (a late reading changes nothing).
    pub(super) fn water_reading(
        &mut self,
        summary: &EventSummary,
        event: &CheckedEvent,
        observed: &proto::water::WaterReadingObserved,
    ) -> Option<Change> {
        let reading = observed.reading.as_ref()?;
        let key = asset_key(&summary.domain, &summary.asset_id);
        let asset = self
            .assets
            .entry(key.clone())
            .or_insert_with(|| live::asset(summary, event, AssetDetails::WaterSensor(WaterSensorDetails::default())));
        let AssetDetails::WaterSensor(details) = &mut asset.details else { return None };
        let observed_at = live::rfc3339(reading.observed_at.as_ref());
        if details.measures.get(&reading.measure).is_some_and(|m| m.observed_at > observed_at) {
            return Some(Change::Asset(key, asset.clone()));
        }
        details.measures.insert(
            reading.measure.clone(),
            MeasureReading { value: reading.value, unit: reading.unit.clone(), observed_at: observed_at.clone() },
        );
        details.element_id = observed.element_id.clone();
        details.dma = observed.dma.clone();
        details.flags = observed.flags.clone();
        if observed_at >= asset.observed_at {
            asset.observed_at = observed_at;
        }
        asset.recorded_at = summary.recorded_at.clone();
        asset.last_event_id = summary.id.clone();
        asset.commune = summary.commune.clone();
        if let Some(p) = event.event.position {
            asset.position = Some(LatLon { lat: p.lat, lon: p.lon });
        }
        Some(Change::Asset(key, asset.clone()))
    }
}

//! Reports' KPIs per commune, pure: open reports, received in the last day, closed in the last
//! week and the median time they took to close.

use proto::reports::{ReportStatus, ReportsKpi, ServiceRequest};
use std::collections::BTreeMap;
use std::time::SystemTime;

const DAY_S: i64 = 86_400;

/// Statuses that end a report with an answer (a duplicate ends with its original).
fn closes(status: ReportStatus) -> bool {
    matches!(status, ReportStatus::Fixed | ReportStatus::Closed | ReportStatus::NotResponsible)
}

/// The KPIs of every commune with reports, as of `now`.
pub fn per_commune<'a>(requests: impl IntoIterator<Item = &'a ServiceRequest>, now: SystemTime) -> Vec<ReportsKpi> {
    let now_s = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut kpis: BTreeMap<&str, (ReportsKpi, Vec<i64>)> = BTreeMap::new();
    for r in requests {
        let status = ReportStatus::try_from(r.status).unwrap_or_default();
        if status == ReportStatus::Duplicate || r.commune.is_empty() {
            continue;
        }
        let (kpi, durations) = kpis.entry(&r.commune).or_insert_with(|| {
            (ReportsKpi { commune: r.commune.clone(), at: Some(now.into()), ..Default::default() }, Vec::new())
        });
        let requested = r.requested_datetime.map(|t| t.seconds).unwrap_or(now_s);
        if status.is_open() {
            kpi.open += 1;
        }
        if now_s - requested <= DAY_S {
            kpi.received_last_24h += 1;
        }
        // The last change that closed it, if it is closed now.
        let closed_at = closes(status)
            .then(|| r.history.iter().rev().find(|c| closes(ReportStatus::try_from(c.to).unwrap_or_default())))
            .flatten()
            .and_then(|c| c.at)
            .map(|t| t.seconds);
        if let Some(at) = closed_at
            && now_s - at <= 7 * DAY_S
        {
            kpi.closed_last_7d += 1;
            durations.push((at - requested).max(0));
        }
    }
    kpis.into_values()
        .map(|(mut kpi, mut durations)| {
            durations.sort_unstable();
            kpi.median_time_to_close_s = match durations.len() {
                0 => 0.0,
                n if n % 2 == 1 => durations[n / 2] as f64,
                n => (durations[n / 2 - 1] + durations[n / 2]) as f64 / 2.0,
            };
            kpi
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::reports::StatusChange;
    use std::time::Duration;

    fn report(commune: &str, requested_h_ago: i64, status: ReportStatus, closed_h_ago: Option<i64>) -> ServiceRequest {
        let now = 1_000_000_i64;
        let ts = |h: i64| Some(prost_types::Timestamp { seconds: now - h * 3600, nanos: 0 });
        ServiceRequest {
            commune: commune.into(),
            status: status as i32,
            requested_datetime: ts(requested_h_ago),
            history: closed_h_ago
                .map(|h| vec![StatusChange { at: ts(h), to: status as i32, ..Default::default() }])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn open_received_closed_and_the_median_time_to_close() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let requests = [
            report("34172", 2, ReportStatus::Open, None),
            report("34172", 30, ReportStatus::InProgress, None),
            report("34172", 50, ReportStatus::Fixed, Some(40)), // 10 h
            report("34172", 100, ReportStatus::Closed, Some(70)), // 30 h
            report("34172", 10, ReportStatus::NotResponsible, Some(6)), // 4 h
            report("34172", 400, ReportStatus::Fixed, Some(300)), // closed too long ago
            report("34172", 1, ReportStatus::Duplicate, None),  // not a report of its own
            report("34129", 3, ReportStatus::Open, None),
        ];
        let kpis = per_commune(&requests, now);
        let summary: Vec<(&str, u32, u32, u32, f64)> = kpis
            .iter()
            .map(|k| (k.commune.as_str(), k.open, k.received_last_24h, k.closed_last_7d, k.median_time_to_close_s))
            .collect();
        assert_eq!(summary, [("34129", 1, 1, 0, 0.0), ("34172", 2, 2, 3, 10.0 * 3600.0)]);
    }
}

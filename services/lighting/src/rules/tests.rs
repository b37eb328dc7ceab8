use super::*;

fn id(s: &str) -> AssetId {
    AssetId::parse(s).unwrap()
}

/// Lamps along a street, `spacing_m` apart, going east from (43.6, 3.87).
fn street(rules: &mut Rules, prefix: &str, n: usize, spacing_m: f64, commune: &str) -> Vec<AssetId> {
    let deg_per_m = 1.0 / (111_320.0 * 43.6f64.to_radians().cos());
    (0..n)
        .map(|i| {
            let lamp = id(&format!("{prefix}{i:02}"));
            let place = LampPlace {
                commune: CommuneId::parse(commune).unwrap(),
                lat: 43.6,
                lon: 3.87 + i as f64 * spacing_m * deg_per_m,
                street: String::new(),
            };
            rules.add_lamp(lamp.clone(), place);
            lamp
        })
        .collect()
}

use proto::lighting::PowerState;

fn night_report(status: LampStatus) -> StatusReport {
    StatusReport {
        status: status as i32,
        power_state: PowerState::On as i32,
        illuminance_level: 1.0,
        ..Default::default()
    }
}

fn midnight() -> SystemTime {
    chrono::DateTime::parse_from_rfc3339("2026-12-21T23:00:00Z").unwrap().with_timezone(&chrono::Utc).into()
}

fn noon() -> SystemTime {
    chrono::DateTime::parse_from_rfc3339("2026-12-21T12:00:00Z").unwrap().with_timezone(&chrono::Utc).into()
}

fn status(rules: &mut Rules, lamp: &AssetId, report: &StatusReport, at: SystemTime) -> Vec<AlarmChange> {
    rules.observe_status(lamp, report, at);
    rules.settle()
}

fn fault(rules: &mut Rules, lamp: &AssetId, fault: TalqFault, active: bool) -> Vec<AlarmChange> {
    rules.observe_fault(lamp, fault, active);
    rules.settle()
}

fn active(rules: &Rules, alarm_type: &str) -> Vec<ActiveAlarm> {
    rules.active_alarms().filter(|a| a.raised.alarm_type == alarm_type).cloned().collect()
}

#[test]
fn clustering_table() {
    let p = |name: &str, east_m: f64, north_m: f64| {
        let lat = 43.6 + north_m / 111_132.0;
        (id(name), lat, 3.87 + east_m / (111_320.0 * 43.6f64.to_radians().cos()))
    };
    type Case<'a> = (&'a str, Vec<(AssetId, f64, f64)>, f64, usize, Vec<Vec<&'a str>>);
    let cases: Vec<Case> = vec![
        ("nothing", vec![], 50.0, 2, vec![]),
        (
            "a chain 40 m apart links",
            vec![p("a", 0.0, 0.0), p("b", 40.0, 0.0), p("c", 80.0, 0.0)],
            50.0,
            3,
            vec![vec!["a", "b", "c"]],
        ),
        ("60 m apart does not", vec![p("a", 0.0, 0.0), p("b", 60.0, 0.0), p("c", 120.0, 0.0)], 50.0, 2, vec![]),
        ("below the minimum size", vec![p("a", 0.0, 0.0), p("b", 10.0, 0.0)], 50.0, 3, vec![]),
        (
            "two groups",
            vec![p("a", 0.0, 0.0), p("b", 0.0, 30.0), p("c", 500.0, 0.0), p("d", 520.0, 0.0)],
            50.0,
            2,
            vec![vec!["a", "b"], vec!["c", "d"]],
        ),
        ("across a grid cell border", vec![p("a", 49.0, 0.0), p("b", 51.0, 0.0)], 50.0, 2, vec![vec!["a", "b"]]),
        ("diagonal neighbours", vec![p("a", 0.0, 0.0), p("b", 30.0, 30.0)], 50.0, 2, vec![vec!["a", "b"]]),
    ];
    for (why, points, radius, min, expected) in cases {
        let got: Vec<Vec<String>> = clusters(&points, radius, min)
            .into_iter()
            .map(|g| g.into_iter().map(|i| i.to_string()).collect())
            .collect();
        let expected: Vec<Vec<String>> =
            expected.into_iter().map(|g| g.into_iter().map(String::from).collect()).collect();
        assert_eq!(got, expected, "{why}");
    }
}

#[test]
fn a_dark_street_is_one_cluster_alarm_that_clears_when_repaired() {
    let mut rules = Rules::new(RulesConfig::default());
    let lamps = street(&mut rules, "EP", 8, 30.0, "34172");
    // One dark lamp: a lamp alarm.
    let changes = status(&mut rules, &lamps[0], &night_report(LampStatus::DefectiveLamp), midnight());
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.key == "lighting/lamp_failure/EP00"),
        "{changes:?}"
    );
    // Four more within 30 m of each other: one cluster, the lamp alarms folded into it.
    for lamp in &lamps[1..5] {
        status(&mut rules, lamp, &night_report(LampStatus::DefectiveLamp), midnight());
    }
    let clusters = active(&rules, OUTAGE_CLUSTER);
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(clusters[0].raised.key, "lighting/outage_cluster/EP00");
    assert_eq!(clusters[0].raised.asset_ids.len(), 5);
    assert_eq!(clusters[0].raised.severity, Severity::Major as i32);
    assert!(active(&rules, LAMP_FAILURE).is_empty(), "lamp alarms are folded into the cluster");
    // It grows: same key, one more member.
    let changes = status(&mut rules, &lamps[5], &night_report(LampStatus::DefectiveLamp), midnight());
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.key == "lighting/outage_cluster/EP00" && a.raised.asset_ids.len() == 6),
        "{changes:?}"
    );
    // Repeated report of the same state: no change at all.
    assert!(status(&mut rules, &lamps[5], &night_report(LampStatus::DefectiveLamp), midnight()).is_empty());
    // Repairs: the cluster shrinks, then clears; the last dark lamp gets its own alarm back.
    for lamp in &lamps[0..5] {
        status(&mut rules, lamp, &night_report(LampStatus::Ok), midnight());
    }
    assert!(active(&rules, OUTAGE_CLUSTER).is_empty());
    let lamp_alarms = active(&rules, LAMP_FAILURE);
    assert_eq!(lamp_alarms.len(), 1);
    assert_eq!(lamp_alarms[0].raised.key, "lighting/lamp_failure/EP05");
}

#[test]
fn a_batch_settled_once_raises_no_transient_lamp_alarms() {
    let mut rules = Rules::new(RulesConfig::default());
    let lamps = street(&mut rules, "EP", 6, 20.0, "34172");
    for lamp in &lamps {
        rules.observe_fault(lamp, TalqFault::SupplyLoss, true);
    }
    let changes = rules.settle();
    assert_eq!(changes.len(), 1, "one cluster alarm and nothing else: {changes:?}");
    assert!(
        matches!(&changes[0], AlarmChange::Raised(a) if a.raised.alarm_type == OUTAGE_CLUSTER && a.raised.asset_ids.len() == 6)
    );
    assert!(rules.settle().is_empty());
    assert!(rules.recheck_all().is_empty(), "a consistent state needs no change");
}

#[test]
fn clusters_do_not_cross_communes() {
    let mut rules = Rules::new(RulesConfig::default());
    let west = street(&mut rules, "A", 3, 20.0, "34172");
    let east = street(&mut rules, "B", 3, 20.0, "34129");
    for lamp in west.iter().chain(&east) {
        status(&mut rules, lamp, &night_report(LampStatus::DefectiveLamp), midnight());
    }
    assert!(active(&rules, OUTAGE_CLUSTER).is_empty(), "3 + 3 in two communes is not a cluster of 5");
    assert_eq!(active(&rules, LAMP_FAILURE).len(), 6);
}

#[test]
fn supply_loss_darkens_and_other_faults_warn() {
    let mut rules = Rules::new(RulesConfig::default());
    let lamps = street(&mut rules, "EP", 1, 30.0, "34172");
    let changes = fault(&mut rules, &lamps[0], TalqFault::SupplyLoss, true);
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.details.get("cause").map(String::as_str) == Some("supply_loss")),
        "{changes:?}"
    );
    let changes = fault(&mut rules, &lamps[0], TalqFault::DimmingFailure, true);
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.alarm_type == DIMMING_FAILURE && a.raised.severity == Severity::Warning as i32)
    );
    let changes = fault(&mut rules, &lamps[0], TalqFault::SupplyLoss, false);
    assert!(
        matches!(&changes[..], [AlarmChange::Cleared { cleared, .. }] if cleared.key == "lighting/lamp_failure/EP00")
    );
    assert_eq!(active(&rules, DIMMING_FAILURE).len(), 1);
}

#[test]
fn lamp_on_in_daytime_follows_the_sun() {
    let mut rules = Rules::new(RulesConfig::default());
    let lamps = street(&mut rules, "EP", 1, 30.0, "34172");
    let on = night_report(LampStatus::Ok);
    assert!(status(&mut rules, &lamps[0], &on, midnight()).is_empty(), "lit at night is normal");
    let changes = status(&mut rules, &lamps[0], &on, noon());
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.alarm_type == LAMP_ON_IN_DAYTIME),
        "{changes:?}"
    );
    // Still on at dusk: the condition is over.
    let changes = rules.tick(midnight());
    assert!(matches!(&changes[..], [AlarmChange::Cleared { .. }]), "{changes:?}");
    // Reported off by day: no alarm.
    let off = StatusReport { status: LampStatus::Ok as i32, power_state: PowerState::Off as i32, ..Default::default() };
    assert!(status(&mut rules, &lamps[0], &off, noon()).is_empty());
    // A defective lamp is dark, not "on in daytime".
    let changes = status(&mut rules, &lamps[0], &night_report(LampStatus::DefectiveLamp), noon());
    assert!(changes.iter().all(|c| !matches!(c, AlarmChange::Raised(a) if a.raised.alarm_type == LAMP_ON_IN_DAYTIME)));
}

#[test]
fn restored_state_continues() {
    let mut rules = Rules::new(RulesConfig::default());
    let lamps = street(&mut rules, "EP", 6, 30.0, "34172");
    for lamp in &lamps[0..5] {
        status(&mut rules, lamp, &night_report(LampStatus::DefectiveLamp), midnight());
    }
    let conditions: Vec<_> = lamps.iter().map(|l| (l.clone(), rules.condition(l))).collect();
    let alarms: Vec<_> = rules.active_alarms().cloned().collect();
    let mut again = Rules::new(RulesConfig::default());
    street(&mut again, "EP", 6, 30.0, "34172");
    again.restore(conditions, alarms);
    // The sixth lamp joins the existing cluster: same key.
    let changes = status(&mut again, &lamps[5], &night_report(LampStatus::DefectiveLamp), midnight());
    assert!(
        matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.key == "lighting/outage_cluster/EP00" && a.raised.asset_ids.len() == 6),
        "{changes:?}"
    );
}

//! Citizen-report rules, pure: input checks and clean-up, and duplicate detection. The lifecycle's
//! names and Open311 mapping are the contract's (`ReportStatus::token`, `open311`).

use proto::reports::{Contact, ReportStatus, ServiceDefinition, ServiceRequest, StatusChange};
use std::collections::HashMap;

pub const MAX_DESCRIPTION_CHARS: usize = 4_000;
pub const MAX_ADDRESS_CHARS: usize = 300;
pub const MAX_URL_CHARS: usize = 500;
pub const MAX_NOTE_CHARS: usize = 1_000;
pub const MAX_ATTRIBUTE_CHARS: usize = 200;
/// Changes a report's history keeps: its first (how it came in) and the latest. Every duplicate
/// attached adds one, and the whole report travels in each of its events: unbounded, a report
/// duplicated thousands of times outgrew what NATS takes and blocked the service's outbox.
pub const MAX_HISTORY: usize = 50;

/// Adds a change to a history, dropping the oldest but the first beyond [`MAX_HISTORY`].
pub fn record_change(history: &mut Vec<StatusChange>, change: StatusChange) {
    history.push(change);
    if history.len() > MAX_HISTORY {
        let excess = history.len() - MAX_HISTORY;
        history.drain(1..1 + excess);
    }
}

/// Two open reports of the same service this close are one problem.
pub const DUPLICATE_RADIUS_M: f64 = 50.0;

/// Free text as stored: control characters (but line breaks) removed, trimmed, bounded.
pub fn clean_text(what: &str, text: &str, max_chars: usize) -> Result<String, String> {
    let cleaned: String = text.chars().filter(|c| xml_char(*c) && (!c.is_control() || *c == '\n')).collect();
    let cleaned = cleaned.trim().to_owned();
    if cleaned.chars().count() > max_chars {
        return Err(format!("{what} is longer than {max_chars} characters"));
    }
    Ok(cleaned)
}

/// Whether XML 1.0 may carry the character (its `Char` production): a report's text is served
/// as `requests.xml`, and one forbidden character would make the whole document unreadable.
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(String::new());
    }
    let ok = url.chars().count() <= MAX_URL_CHARS
        && (url.starts_with("https://") || url.starts_with("http://"))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(format!("media_url must be an http(s) address of at most {MAX_URL_CHARS} characters"));
    }
    Ok(url.to_owned())
}

/// Checks the citizen's answers against the service's attributes; returns them cleaned.
pub fn check_attributes(
    service: &ServiceDefinition,
    given: &HashMap<String, String>,
) -> Result<HashMap<String, String>, String> {
    for code in given.keys() {
        if !service.attributes.iter().any(|a| a.variable && &a.code == code) {
            return Err(format!("service {} has no attribute {code:?}", service.service_code));
        }
    }
    let mut out = HashMap::new();
    for a in service.attributes.iter().filter(|a| a.variable) {
        let value = given.get(&a.code).map(|v| v.trim()).unwrap_or_default();
        if value.is_empty() {
            if a.required {
                return Err(format!("attribute {} ({}) is required", a.code, a.description));
            }
            continue;
        }
        let value = clean_text(&format!("attribute {}", a.code), value, MAX_ATTRIBUTE_CHARS)?;
        let known = |v: &str| a.values.iter().any(|k| k.key == v);
        let valid = match a.datatype.as_str() {
            "number" => value.parse::<f64>().is_ok_and(f64::is_finite),
            "datetime" => chrono::DateTime::parse_from_rfc3339(&value).is_ok(),
            "singlevaluelist" => known(&value),
            "multivaluelist" => value.split(',').all(|v| known(v.trim())),
            _ => true,
        };
        if !valid {
            let keys: Vec<&str> = a.values.iter().map(|v| v.key.as_str()).collect();
            let expected = match a.datatype.as_str() {
                "number" => "a number".to_owned(),
                "datetime" => "an ISO 8601 date and time".to_owned(),
                _ => format!("one of {}", keys.join(", ")),
            };
            return Err(format!("attribute {}: {value:?} is not {expected}", a.code));
        }
        out.insert(a.code.clone(), value);
    }
    Ok(out)
}

pub fn check_contact(c: &Contact) -> Result<Contact, String> {
    let field = |what: &str, v: &str, max: usize| clean_text(what, v, max).map(|s| s.replace('\n', " "));
    let contact = Contact {
        email: field("email", &c.email, 254)?,
        device_id: field("device_id", &c.device_id, 100)?,
        account_id: field("account_id", &c.account_id, 100)?,
        first_name: field("first_name", &c.first_name, 100)?,
        last_name: field("last_name", &c.last_name, 100)?,
        phone: field("phone", &c.phone, 32)?,
    };
    if !contact.email.is_empty() && !contact.email.contains('@') {
        return Err("email is not an e-mail address".into());
    }
    Ok(contact)
}

/// Metres between two points (equirectangular; exact enough at 50 m).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let lat = ((a.0 + b.0) / 2.0).to_radians();
    let dx = (b.1 - a.1) * 111_320.0 * lat.cos();
    let dy = (b.0 - a.0) * 111_132.0;
    dx.hypot(dy)
}

/// The report a new one duplicates: the earliest open, original report of the same service in the
/// same commune within [`DUPLICATE_RADIUS_M`].
pub fn find_duplicate<'a>(
    existing: impl Iterator<Item = &'a ServiceRequest>,
    commune: &str,
    service_code: &str,
    at: (f64, f64),
) -> Option<&'a ServiceRequest> {
    existing
        .filter(|r| {
            r.commune == commune
                && r.service_code == service_code
                && r.duplicate_of.is_empty()
                && ReportStatus::try_from(r.status).is_ok_and(ReportStatus::is_open)
                && distance_m((r.lat, r.lon), at) <= DUPLICATE_RADIUS_M
        })
        .min_by(|a, b| {
            let key =
                |r: &ServiceRequest| (r.requested_datetime.map(|t| (t.seconds, t.nanos)), r.service_request_id.clone());
            key(a).cmp(&key(b))
        })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_history_keeps_its_first_change_and_the_latest() {
        let change = |note: &str| StatusChange { note: note.into(), ..Default::default() };
        let mut history = Vec::new();
        for k in 0..10_000 {
            record_change(&mut history, change(&format!("{k}")));
        }
        assert_eq!(history.len(), MAX_HISTORY);
        assert_eq!(history[0].note, "0", "how it came in");
        assert_eq!(history[MAX_HISTORY - 1].note, "9999");
        assert_eq!(history[1].note, format!("{}", 10_000 - MAX_HISTORY + 1));
    }

    use super::*;
    use crate::catalogue;

    fn report(id: &str, service: &str, lat: f64, lon: f64, status: ReportStatus, seconds: i64) -> ServiceRequest {
        ServiceRequest {
            service_request_id: id.into(),
            service_code: service.into(),
            commune: "34172".into(),
            lat,
            lon,
            status: status as i32,
            requested_datetime: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    /// Metres north of (43.6, 3.87), in degrees of latitude.
    fn north(m: f64) -> f64 {
        43.6 + m / 111_132.0
    }

    #[test]
    fn duplicates_within_50_m_of_an_open_report_of_the_same_service() {
        use ReportStatus::*;
        let existing = [
            report("1", "voirie", north(0.0), 3.87, Open, 100),
            report("2", "voirie", north(10.0), 3.87, Open, 200),
            report("3", "eau", north(0.0), 3.87, Open, 50),
            report("4", "voirie", north(0.0), 3.87, Fixed, 10),
        ];
        let cases = [
            ("voirie", north(49.0), Some("1"), "49 m away: the earliest open one"),
            ("voirie", north(59.5), Some("2"), "59.5 m from the first, 49.5 m from the second"),
            ("voirie", north(61.0), None, "just beyond 50 m of both"),
            ("eau", north(20.0), Some("3"), "its own service"),
            ("proprete", north(0.0), None, "another service"),
        ];
        for (service, lat, expected, why) in cases {
            let found =
                find_duplicate(existing.iter(), "34172", service, (lat, 3.87)).map(|r| r.service_request_id.as_str());
            assert_eq!(found, expected, "{why}");
        }
        assert!(find_duplicate(existing.iter(), "34129", "voirie", (north(0.0), 3.87)).is_none(), "another commune");
    }

    #[test]
    fn the_lifecycle_maps_to_open311() {
        use ReportStatus::*;
        for (status, open311, token) in [
            (Open, "open", "open"),
            (Confirmed, "open", "confirmed"),
            (Investigating, "open", "investigating"),
            (ActionScheduled, "open", "action_scheduled"),
            (InProgress, "open", "in_progress"),
            (Fixed, "closed", "fixed"),
            (Closed, "closed", "closed"),
            (Duplicate, "closed", "duplicate"),
            (NotResponsible, "closed", "not_responsible"),
        ] {
            assert_eq!((status.open311(), status.token()), (open311, token));
        }
    }

    #[test]
    fn attributes_are_checked_against_the_service() {
        let services = catalogue::defaults();
        let depot = services.iter().find(|s| s.service_code == "proprete-depot-sauvage").unwrap();
        let given = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(check_attributes(depot, &given(&[("volume", "sac")])).unwrap()["volume"], "sac");
        let cases = [
            (given(&[]), "required"),
            (given(&[("volume", "piscine")]), "one of sac, coffre, camion"),
            (given(&[("volume", "sac"), ("couleur", "bleu")]), "no attribute \"couleur\""),
        ];
        for (answers, expected) in cases {
            let err = check_attributes(depot, &answers).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn text_is_cleaned_and_bounded() {
        assert_eq!(clean_text("d", "  Trou\u{7} profond\n ici ", 100).unwrap(), "Trou profond\n ici");
        assert!(clean_text("description", &"x".repeat(4_001), MAX_DESCRIPTION_CHARS).is_err());
        assert!(check_url("javascript:alert(1)").is_err());
        assert_eq!(check_url(" https://x.org/a.jpg ").unwrap(), "https://x.org/a.jpg");
        assert!(check_contact(&Contact { email: "pas-une-adresse".into(), ..Default::default() }).is_err());
    }
}

/// Property tests of the citizens' text checks (Open311 forms, gRPC): whatever text arrives, the
/// answer comes without panicking, and what is kept is bounded and XML 1.0 can carry it.
#[cfg(test)]
mod text_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kept_text_is_bounded_and_carried_by_xml(text in any::<String>(), max in 0usize..64) {
            if let Ok(kept) = clean_text("description", &text, max) {
                prop_assert!(kept.chars().count() <= max);
                prop_assert!(kept.chars().all(xml_char));
                prop_assert!(kept.chars().all(|c| !c.is_control() || c == '\n'));
                prop_assert_eq!(kept.trim(), kept.as_str());
            }
        }

        #[test]
        fn kept_urls_are_http_without_spaces(url in any::<String>()) {
            if let Ok(kept) = check_url(&url) {
                prop_assert!(kept.is_empty() || kept.starts_with("http://") || kept.starts_with("https://"));
                prop_assert!(!kept.chars().any(|c| c.is_control() || c.is_whitespace()));
                prop_assert!(kept.chars().count() <= MAX_URL_CHARS);
            }
        }
    }
}

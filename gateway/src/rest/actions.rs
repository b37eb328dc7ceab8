//! Operators' acts over REST: alarm actions (one by one or in bulk), log book entries and system
//! notices acknowledged. Each is published as an `ops` event (durable once JetStream acknowledged
//! it); the answer waits for this gateway's view to apply it (the caller reads its own write).

use super::*;

/// An operator's action on an alarm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmActionRequest {
    alarm_key: String,
    /// `acknowledge`, `assign`, `comment`, `shelve`, `unshelve`, `resolve`.
    action: String,
    #[serde(default)]
    assignee: String,
    #[serde(default)]
    comment: String,
    /// `shelve`: until when (RFC 3339, within `--max-shelve`, 8 h by default); `comment` says why.
    shelved_until: Option<String>,
}

#[derive(Serialize)]
struct ActionAnswer {
    event_id: String,
    /// The alarm after the action (absent when it left the view: closed).
    alarm: Option<AlarmState>,
}

fn text(name: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{name} is required")));
    }
    if value.chars().count() > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!("{name}: at most {max} characters of text")));
    }
    Ok(())
}

pub(super) async fn alarm_action(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<AlarmActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    let action = CheckedAlarmAction::parse(
        &request.action,
        &request.assignee,
        &request.comment,
        request.shelved_until.as_deref(),
        state.max_shelve,
    )?;
    let key = AlarmKey::parse(&request.alarm_key).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (event_id, seq) = publish_alarm_action(&state, &p, &key, &action).await?;
    let applied = state.live.wait_applied(seq, READ_YOUR_WRITE).await;
    // Read again under the caller's scope: the alarm may have moved to another commune meanwhile.
    let alarm = state.live.read(|view| view.alarm(key.as_str()).cloned()).filter(|a| p.scope.allows(&a.commune));
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(ActionAnswer { event_id, alarm })).into_response())
}

/// How far past `--max-shelve` a shelve's end may fall (clocks estimated across the network).
const SHELVE_SLACK: Duration = Duration::from_secs(120);

/// Alarms one bulk action names at most (a flood of a few hundred lamps of one commune is one
/// group, acknowledged in one request).
const MAX_BULK_ALARMS: usize = 1_000;

/// The same action on many alarms at once (an operator acknowledging an alarm flood): one
/// request, one event (and one audit entry) per alarm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAlarmActionRequest {
    alarm_keys: Vec<String>,
    /// `acknowledge`, `shelve`, `unshelve` or `resolve` (assignments and comments are one by one).
    action: String,
    #[serde(default)]
    comment: String,
    shelved_until: Option<String>,
}

#[derive(Serialize)]
struct BulkAnswer {
    /// Event ids of the actions published, in the order of `alarm_keys`.
    done: Vec<BulkDone>,
    /// Alarms not acted on, and why (unknown to the caller, a bad key).
    refused: Vec<BulkRefused>,
}

#[derive(Serialize)]
struct BulkDone {
    alarm_key: String,
    event_id: String,
}

#[derive(Serialize)]
struct BulkRefused {
    alarm_key: String,
    error: String,
}

pub(super) async fn bulk_alarm_action(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<BulkAlarmActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    if !["acknowledge", "shelve", "unshelve", "resolve"].contains(&request.action.as_str()) {
        return Err(ApiError::bad_request("a bulk action is acknowledge, shelve, unshelve or resolve"));
    }
    if request.alarm_keys.is_empty() || request.alarm_keys.len() > MAX_BULK_ALARMS {
        return Err(ApiError::bad_request(format!("alarm_keys names 1 to {MAX_BULK_ALARMS} alarms")));
    }
    let action = CheckedAlarmAction::parse(
        &request.action,
        "",
        &request.comment,
        request.shelved_until.as_deref(),
        state.max_shelve,
    )?;
    let (mut done, mut refused, mut last_seq) = (Vec::new(), Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    for raw in request.alarm_keys {
        if !seen.insert(raw.clone()) {
            continue;
        }
        let shown: String = raw.chars().take(proto::ids::AlarmKey::MAX_LEN).collect();
        let outcome = match AlarmKey::parse(&raw) {
            Ok(key) => publish_alarm_action(&state, &p, &key, &action).await,
            Err(e) => Err(ApiError::bad_request(e.to_string())),
        };
        match outcome {
            Ok((event_id, seq)) => {
                last_seq = last_seq.max(seq);
                done.push(BulkDone { alarm_key: shown, event_id });
            }
            // The store or the bus failing is not one alarm's business: stop there.
            Err(e) if e.status().is_server_error() => return Err(e),
            Err(e) => refused.push(BulkRefused { alarm_key: shown, error: e.message().to_owned() }),
        }
    }
    let applied = last_seq == 0 || state.live.wait_applied(last_seq, READ_YOUR_WRITE).await;
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(BulkAnswer { done, refused })).into_response())
}

/// An alarm action, checked (its kind and fields), before it names an alarm.
struct CheckedAlarmAction {
    kind: AlarmActionKind,
    assignee: String,
    comment: String,
    shelved_until: Option<prost_types::Timestamp>,
}

impl CheckedAlarmAction {
    /// `max_shelve`: how far ahead a shelve may reach.
    fn parse(
        action: &str,
        assignee: &str,
        comment: &str,
        shelved_until: Option<&str>,
        max_shelve: Duration,
    ) -> Result<Self, ApiError> {
        let kind = match action {
            "acknowledge" => AlarmActionKind::Acknowledge,
            "assign" => AlarmActionKind::Assign,
            "comment" => AlarmActionKind::Comment,
            "shelve" => AlarmActionKind::Shelve,
            "unshelve" => AlarmActionKind::Unshelve,
            "resolve" => AlarmActionKind::Resolve,
            _ => {
                return Err(ApiError::bad_request(
                    "action is one of acknowledge, assign, comment, shelve, unshelve, resolve",
                ));
            }
        };
        text("assignee", assignee, 64, false)?;
        // A comment says what it says; a shelve says why the alarm is hidden (ISA-18.2).
        let required = matches!(kind, AlarmActionKind::Comment | AlarmActionKind::Shelve);
        text("comment", comment, MAX_COMMENT_CHARS, required)?;
        let now = SystemTime::now();
        let shelved_until = match (kind, shelved_until) {
            (AlarmActionKind::Shelve, Some(until)) => {
                let t = chrono::DateTime::parse_from_rfc3339(until)
                    .map_err(|_| ApiError::bad_request("shelved_until is not an RFC 3339 time"))?;
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
                // A console computes the end on its estimate of this clock: a little slack.
                if t <= now || t > now + max_shelve + SHELVE_SLACK {
                    let hours = max_shelve.as_secs_f64() / 3600.0;
                    return Err(ApiError::bad_request(format!(
                        "shelved_until must be within the next {hours} h (--max-shelve)"
                    )));
                }
                Some(event::timestamp(t))
            }
            (AlarmActionKind::Shelve, None) => return Err(ApiError::bad_request("shelve needs shelved_until")),
            (_, Some(_)) => return Err(ApiError::bad_request("shelved_until goes with shelve only")),
            (_, None) => None,
        };
        Ok(CheckedAlarmAction {
            kind,
            assignee: assignee.trim().to_owned(),
            comment: comment.to_owned(),
            shelved_until,
        })
    }
}

/// Publishes `action` on the alarm `key` as `p`; its event id and stream sequence.
async fn publish_alarm_action(
    state: &ApiState,
    p: &Principal,
    key: &AlarmKey,
    action: &CheckedAlarmAction,
) -> Result<(String, u64), ApiError> {
    // The alarm must be in the view; the action belongs to its commune and asset.
    // Another commune's alarm is, to this operator, not there.
    let alarm = state
        .live
        .read(|view| view.alarm(key.as_str()).cloned())
        .filter(|a| p.scope.allows(&a.commune))
        .ok_or_else(|| ApiError::not_found(format!("no alarm {key} in the view (closed, or never raised)")))?;
    let commune = CommuneId::parse(&alarm.commune).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let asset = AssetId::parse(&alarm.asset_id).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let payload = AlarmAction {
        alarm_key: key.to_string(),
        action: action.kind as i32,
        actor: p.login.clone(),
        assignee: action.assignee.clone(),
        comment: action.comment.clone(),
        shelved_until: action.shelved_until,
    };
    let now = SystemTime::now();
    let checked =
        event::check(event::new_event(&commune, &asset, event::timestamp(now), None, Payload::AlarmAction(payload)))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event_id = checked.event.id.clone();
    let seq = publish(&state.js, &checked).await?;
    Ok((event_id, seq))
}

/// A free-text entry of the log book.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogbookRequest {
    /// The commune it concerns (INSEE code).
    commune: String,
    text: String,
}

#[derive(Serialize)]
struct LogbookAnswer {
    event_id: String,
    /// The entry as the audit log has it (absent when this gateway has not applied it yet).
    entry: Option<AuditEntry>,
}

pub(super) async fn logbook_entry(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<LogbookRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    text("text", &request.text, MAX_COMMENT_CHARS, true)?;
    let commune = CommuneId::parse(&request.commune).map_err(|e| ApiError::bad_request(format!("commune: {e}")))?;
    if !p.scope.allows(commune.as_str()) {
        return Err(forbidden(format!("commune {commune} is outside your communes")));
    }
    let actor = p.login.clone();
    let entry = LogbookEntry { actor: actor.clone(), text: request.text.trim().to_owned() };
    let asset = AssetId::parse("logbook").map_err(|e| ApiError::unavailable(e.to_string()))?;
    let now = event::timestamp(SystemTime::now());
    let checked = event::check(event::new_event(&commune, &asset, now, None, Payload::LogbookEntry(entry)))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event_id = checked.event.id.clone();
    let seq = publish(&state.js, &checked).await?;
    let applied = state.live.wait_applied(seq, READ_YOUR_WRITE).await;
    let query =
        AuditQuery { communes: None, actor: Some(actor), action: Some("note".into()), from: None, to: None, limit: 20 };
    let entry = if applied {
        state.store.audit(&query).ok().and_then(|list| list.into_iter().find(|e| e.event_id == event_id))
    } else {
        None
    };
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(LogbookAnswer { event_id, entry })).into_response())
}

/// The system notices (events the view could never apply), oldest first. An operator of some
/// communes sees that data may be missing, not the stream's sequences (every commune's volume).
pub(super) async fn notices(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    reader(&p)?;
    let all = matches!(p.scope, crate::auth::Scope::All);
    let items: Vec<proto::live::SystemNotice> = state
        .store
        .notices()
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .into_iter()
        .map(|n| if all { n } else { proto::live::SystemNotice { from_seq: None, to_seq: None, ..n } })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeNotices {
    /// Every notice up to this id (the newest the supervisor read).
    up_to: u64,
}

/// A supervisor acknowledges the notices up to an id: they are no longer announced.
pub(super) async fn acknowledge_notices(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<AcknowledgeNotices>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if p.role != crate::auth::Role::Supervisor {
        return Err(forbidden("system notices are acknowledged by a supervisor"));
    }
    let Json(request) = body.map_err(ApiError::from_json)?;
    let acknowledged =
        state.store.acknowledge_notices(request.up_to).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let left = state.store.notices().map_err(|e| ApiError::unavailable(e.to_string()))?.len();
    state.live.set_notices(left);
    tracing::info!(by = %p.login, acknowledged, left, "system notices acknowledged");
    Ok(Json(serde_json::json!({ "acknowledged": acknowledged, "left": left })).into_response())
}

/// Publishes an operator's event and waits for JetStream's acknowledgement (then it is durable);
/// returns its stream sequence.
async fn publish(js: &jetstream::Context, event: &proto::event::CheckedEvent) -> Result<u64, ApiError> {
    use prost::Message;
    let message = jetstream::message::PublishMessage::build()
        .message_id(&event.event.id)
        .payload(event.event.encode_to_vec().into());
    let ack = async {
        let ack = js.send_publish(event.subject(), message).await?;
        anyhow::Ok(ack.await?)
    };
    match tokio::time::timeout(Duration::from_secs(5), ack).await {
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("the event bus did not take the action: {e}; retry"))),
        Err(_) => Err(ApiError::unavailable("the event bus did not answer in time; retry")),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const ACTIONS: [&str; 6] = ["acknowledge", "assign", "comment", "shelve", "unshelve", "resolve"];

    fn action() -> impl Strategy<Value = String> {
        prop_oneof![prop::sample::select(ACTIONS.map(str::to_owned).to_vec()), any::<String>()]
    }

    /// A shelve's end: RFC 3339 times from an hour ago to a day ahead, or any text.
    fn until() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            (-3_600i64..86_400).prop_map(|ahead| (chrono::Utc::now() + chrono::Duration::seconds(ahead)).to_rfc3339()),
            any::<String>(),
        ])
    }

    fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            (action(), any::<String>(), prop::collection::vec(any::<String>(), 0..4), any::<u64>()).prop_map(
                |(action, text, keys, n)| {
                    serde_json::json!({ "alarm_key": text, "alarm_keys": keys, "action": action, "comment": text,
                        "commune": text, "text": text, "up_to": n })
                    .to_string()
                    .into_bytes()
                }
            ),
        ]
    }

    proptest! {
        /// Any body decodes into a request or a refusal; none panics.
        #[test]
        fn random_bodies_never_panic(bytes in json_bytes()) {
            let _ = serde_json::from_slice::<AlarmActionRequest>(&bytes);
            let _ = serde_json::from_slice::<BulkAlarmActionRequest>(&bytes);
            let _ = serde_json::from_slice::<LogbookRequest>(&bytes);
            let _ = serde_json::from_slice::<AcknowledgeNotices>(&bytes);
        }

        /// What the check accepts is a known action with bounded text, and a shelve that ends
        /// within --max-shelve (and only a shelve has an end).
        #[test]
        fn accepted_actions_are_bounded(
            action in action(),
            assignee in any::<String>(),
            comment in prop_oneof![any::<String>(), "[a-z \n]{0,40}"],
            until in until(),
        ) {
            let max_shelve = Duration::from_secs(8 * 3600);
            let Ok(checked) = CheckedAlarmAction::parse(&action, &assignee, &comment, until.as_deref(), max_shelve)
            else {
                return Ok(());
            };
            prop_assert!(ACTIONS.contains(&action.as_str()));
            let text_ok = |t: &str, max: usize| t.chars().count() <= max && !t.chars().any(|c| c.is_control() && c != '\n');
            prop_assert!(text_ok(&checked.assignee, 64) && text_ok(&checked.comment, MAX_COMMENT_CHARS));
            if matches!(checked.kind, AlarmActionKind::Comment | AlarmActionKind::Shelve) {
                prop_assert!(!checked.comment.trim().is_empty());
            }
            match checked.shelved_until {
                Some(end) => {
                    prop_assert_eq!(checked.kind, AlarmActionKind::Shelve);
                    let end = SystemTime::try_from(end).expect("a valid time");
                    let now = SystemTime::now();
                    prop_assert!(end > now - Duration::from_secs(1), "a shelve that ended already");
                    prop_assert!(end <= now + max_shelve + SHELVE_SLACK);
                }
                None => prop_assert!(checked.kind != AlarmActionKind::Shelve),
            }
        }
    }
}

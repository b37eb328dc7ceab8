//! The alarm lifecycle in the operations view: raised (again) under its key, cleared, and the
//! operators' actions (acknowledge, assign, comment, shelve, resolve), including when an alarm
//! moves to another commune.

use super::*;

impl OperationsView {
    pub(super) fn raise(&mut self, summary: &EventSummary, event: &CheckedEvent, raised: &AlarmRaised) -> Change {
        let position = event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon });
        let alarm = self
            .alarms
            .entry(raised.key.clone())
            .and_modify(|a| {
                a.raise_count += 1;
                a.last_raised_at = summary.observed_at.clone();
                // The condition is back (or still there): active again.
                a.active = true;
                a.cleared_at = None;
                a.clear_reason = None;
            })
            .or_insert_with(|| AlarmState {
                key: raised.key.clone(),
                domain: summary.domain.clone(),
                alarm_type: raised.alarm_type.clone(),
                severity: String::new(),
                commune: summary.commune.clone(),
                asset_id: summary.asset_id.clone(),
                asset_ids: Vec::new(),
                position,
                details: BTreeMap::new(),
                active: true,
                first_raised_at: summary.observed_at.clone(),
                last_raised_at: summary.observed_at.clone(),
                raise_count: 1,
                cleared_at: None,
                clear_reason: None,
                acknowledged: false,
                acknowledged_by: None,
                acknowledged_at: None,
                assignee: None,
                shelved_until: None,
                comments: Vec::new(),
                closed: false,
                resolved_by: None,
            });
        // Raised again under the same key, the alarm may be somewhere else now (a late bus in
        // the next commune): it belongs where it was last raised, and nothing of where it was
        // (its position) follows it there.
        let moved = alarm.commune != summary.commune;
        if moved {
            // The first commune's operators' work on it (their logins, comments, an
            // acknowledgement or a shelving) is theirs: the alarm starts afresh where it is now.
            alarm.first_raised_at = summary.observed_at.clone();
            alarm.raise_count = 1;
            alarm.acknowledged = false;
            alarm.acknowledged_by = None;
            alarm.acknowledged_at = None;
            alarm.assignee = None;
            alarm.shelved_until = None;
            alarm.comments.clear();
            alarm.resolved_by = None;
        }
        alarm.commune = summary.commune.clone();
        alarm.asset_id = summary.asset_id.clone();
        alarm.severity = live::severity_name(raised.severity).to_owned();
        alarm.asset_ids = raised.asset_ids.clone();
        alarm.details = raised.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        alarm.position = if moved { position } else { position.or(alarm.position) };
        Change::Alarm(raised.key.clone(), alarm.clone())
    }

    /// `None` for an alarm the view does not hold (cleared twice, or raised before the stream's
    /// retention): nothing changes.
    pub(super) fn clear(&mut self, summary: &EventSummary, cleared: &AlarmCleared) -> Option<Change> {
        let alarm = self.alarms.get_mut(&cleared.key)?;
        alarm.active = false;
        alarm.cleared_at = Some(summary.observed_at.clone());
        alarm.clear_reason = Some(cleared.reason.clone());
        // Cleared and acknowledged: done.
        alarm.closed = alarm.acknowledged;
        let state = alarm.clone();
        if state.closed {
            self.alarms.remove(&cleared.key);
        }
        Some(Change::Alarm(cleared.key.clone(), state))
    }

    /// An operator's action on an alarm. `None` for an alarm the view does not hold (closed
    /// meanwhile, by another operator or replica): the audit log still has it.
    pub(super) fn alarm_action(&mut self, summary: &EventSummary, action: &AlarmAction) -> Option<Change> {
        // An action belongs to the commune the operator acted in: an alarm that moved to another
        // commune meanwhile is not theirs to change (the audit log still records the action).
        let alarm = self.alarms.get_mut(&action.alarm_key).filter(|a| a.commune == summary.commune)?;
        let at = summary.observed_at.clone();
        match AlarmActionKind::try_from(action.action).ok()? {
            AlarmActionKind::Acknowledge => {
                if !alarm.acknowledged {
                    alarm.acknowledged = true;
                    alarm.acknowledged_by = Some(action.actor.clone());
                    alarm.acknowledged_at = Some(at.clone());
                }
                alarm.closed = !alarm.active;
            }
            AlarmActionKind::Assign => {
                alarm.assignee = (!action.assignee.is_empty()).then(|| action.assignee.clone());
            }
            AlarmActionKind::Comment => {}
            AlarmActionKind::Shelve => {
                alarm.shelved_until = action.shelved_until.as_ref().map(|t| live::rfc3339(Some(t)))
            }
            AlarmActionKind::Unshelve => alarm.shelved_until = None,
            AlarmActionKind::Resolve => {
                alarm.closed = true;
                alarm.resolved_by = Some(action.actor.clone());
            }
            AlarmActionKind::Unspecified => return None,
        }
        if !action.comment.is_empty() {
            if alarm.comments.len() >= MAX_COMMENTS {
                alarm.comments.remove(0);
            }
            alarm.comments.push(AlarmComment { by: action.actor.clone(), at, text: action.comment.clone() });
        }
        let state = alarm.clone();
        if state.closed {
            self.alarms.remove(&action.alarm_key);
        }
        Some(Change::Alarm(action.alarm_key.clone(), state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::{check, new_event};
    use proto::ids::{AssetId, CommuneId};
    use proto::v1::{Position, Severity};
    use std::time::SystemTime;

    fn alarm_event(payload: Payload) -> CheckedEvent {
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            SystemTime::now().into(),
            Some(Position { lat: 43.6, lon: 3.88 }),
            payload,
        ))
        .unwrap()
    }

    fn action(kind: AlarmActionKind, actor: &str, assignee: &str, comment: &str) -> CheckedEvent {
        alarm_event(Payload::AlarmAction(AlarmAction {
            alarm_key: "lighting/outage_cluster/EP1".into(),
            action: kind as i32,
            actor: actor.into(),
            assignee: assignee.into(),
            comment: comment.into(),
            shelved_until: None,
        }))
    }

    fn alarm_of(applied: Option<Applied>) -> AlarmState {
        match applied.map(|a| a.change) {
            Some(Change::Alarm(_, alarm)) => alarm,
            other => panic!("alarm expected, got {other:?}"),
        }
    }

    #[test]
    fn alarms_are_deduplicated_by_key_and_leave_once_cleared_and_acknowledged() {
        let mut view = OperationsView::default();
        let raised = AlarmRaised {
            key: "lighting/outage_cluster/EP1".into(),
            alarm_type: "outage_cluster".into(),
            severity: Severity::Major as i32,
            asset_ids: vec!["EP1".into(), "EP2".into()],
            details: Default::default(),
        };
        view.apply(&alarm_event(Payload::LightingAlarmRaised(raised.clone())), 1).unwrap();
        let mut grown = raised.clone();
        grown.asset_ids.push("EP3".into());
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmRaised(grown)), 2));
        assert_eq!(
            (alarm.raise_count, alarm.asset_ids.len(), alarm.severity.as_str(), alarm.active),
            (2, 3, "major", true)
        );
        assert_eq!(view.alarms().count(), 1);
        let cleared =
            AlarmCleared { key: raised.key.clone(), alarm_type: raised.alarm_type.clone(), reason: "repaired".into() };
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared.clone())), 3));
        assert_eq!((alarm.active, alarm.closed, alarm.clear_reason.as_deref()), (false, false, Some("repaired")));
        assert_eq!(view.alarms().count(), 1, "cleared, not yet acknowledged: still shown");
        // Raised again: active again, the count goes on.
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmRaised(raised.clone())), 4));
        assert_eq!((alarm.active, alarm.raise_count, alarm.cleared_at.as_deref()), (true, 3, None));
        // The operators' workflow, each step with who and when; the audit log records it.
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Assign, "op-a", "op-b", ""), 5));
        assert_eq!(alarm.assignee.as_deref(), Some("op-b"));
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Comment, "op-b", "", "équipe en route"), 6));
        assert_eq!((alarm.comments[0].by.as_str(), alarm.comments[0].text.as_str()), ("op-b", "équipe en route"));
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Acknowledge, "op-b", "", ""), 7));
        assert_eq!((alarm.acknowledged, alarm.acknowledged_by.as_deref(), alarm.closed), (true, Some("op-b"), false));
        let audit = view.take_audit();
        let steps: Vec<(u64, &str, &str)> =
            audit.iter().map(|e| (e.seq, e.actor.as_str(), e.action.as_str())).collect();
        assert_eq!(steps, [(5, "op-a", "assign"), (6, "op-b", "comment"), (7, "op-b", "acknowledge")]);
        assert_eq!(audit[1].details.get("comment").map(String::as_str), Some("équipe en route"));
        assert!(view.take_audit().is_empty(), "taken once");
        // Acknowledged, then cleared: closed, it leaves.
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared.clone())), 8));
        assert_eq!((alarm.active, alarm.closed), (false, true));
        assert_eq!(view.alarms().count(), 0);
        assert!(
            view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared)), 9).is_none(),
            "cleared twice: nothing"
        );
        // An action on an alarm no longer in the view changes nothing, but is audited.
        assert!(view.apply(&action(AlarmActionKind::Acknowledge, "op-c", "", ""), 10).is_none());
        assert_eq!(view.take_audit().len(), 1);
        // Resolved by an operator while still active: it leaves.
        view.apply(&alarm_event(Payload::LightingAlarmRaised(raised)), 11).unwrap();
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Resolve, "op-a", "", "faux positif"), 12));
        assert_eq!((alarm.closed, alarm.resolved_by.as_deref(), alarm.active), (true, Some("op-a"), true));
        assert_eq!(view.alarms().count(), 0);
    }
}

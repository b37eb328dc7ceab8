//! Lighting commands on the shared desk (`runtime::controller`): a command waits for each of its
//! lamps to be confirmed; what a controller reports, and the deadline, settle it lamp by lamp.
//! Every change returned here is persisted by the caller (the store's `commands` tree holds the
//! same records, so a restart restores the desk).

use proto::lighting::{CommandResult, CommandStatus, ControllerInstruction, LightingCommand};
use runtime::controller::{Desk, Settled};
use std::collections::BTreeSet;

use crate::store::CommandRecord;

/// Reasons kept per command (the counts are exact; the list is a sample for the operator).
const MAX_FAILURE_REASONS: usize = 20;
/// A controller's reason is text from outside: kept to this many characters, without controls.
const MAX_REASON_CHARS: usize = 200;

fn sanitized(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect()
}

/// Pending lighting commands and the controllers that receive them.
pub type CommandDesk = Desk<CommandRecord, ControllerInstruction>;

pub fn new_desk() -> CommandDesk {
    Desk::new("lighting controller", instruction)
}

/// The outcome once no lamp is left to confirm.
pub fn final_status(applied: u32, failed: u32) -> CommandStatus {
    match (applied, failed) {
        (_, 0) => CommandStatus::Applied,
        (0, _) => CommandStatus::Failed,
        _ => CommandStatus::PartiallyApplied,
    }
}

/// A pending command's instruction: the lamps it still waits for.
fn instruction(record: &CommandRecord) -> Option<ControllerInstruction> {
    let command = record.command.as_ref()?;
    Some(ControllerInstruction {
        command_id: command.id.clone(),
        action: command.action,
        streetlight_ids: record.remaining.clone(),
        deadline: command.deadline,
    })
}

/// Starts tracking a new command and sends it to the connected controllers.
pub fn track(desk: &CommandDesk, record: CommandRecord) {
    if let Some(id) = record.command.as_ref().map(|c| c.id.clone()) {
        desk.track(id, record);
    }
}

/// Applies what a controller reports; returns the updated record when something changed (and
/// stops tracking the command, in the same step, once no lamp is left to confirm).
pub fn apply_result(desk: &CommandDesk, result: &CommandResult, now: prost_types::Timestamp) -> Option<CommandRecord> {
    let (record, finished) = desk.settle(&result.command_id, |record| {
        let mut remaining: BTreeSet<String> = record.remaining.iter().cloned().collect();
        let Some(command) = record.command.as_mut() else { return Settled::Unchanged };
        let mut changed = false;
        for lamp in &result.applied {
            if remaining.remove(lamp) {
                command.lamps_applied += 1;
                changed = true;
            }
        }
        for failure in &result.failed {
            if remaining.remove(&failure.streetlight_id) {
                command.lamps_failed += 1;
                if command.failures.len() < MAX_FAILURE_REASONS {
                    command.failures.push(format!("{}: {}", failure.streetlight_id, sanitized(&failure.reason)));
                }
                changed = true;
            }
        }
        if !changed {
            return Settled::Unchanged;
        }
        command.updated_at = Some(now);
        record.remaining = remaining.into_iter().collect();
        if record.remaining.is_empty() { Settled::Finished } else { Settled::Changed }
    })?;
    Some(if finished { finish(record) } else { record })
}

/// The deadline passed: lamps not confirmed count as failed. `None` when already finished.
pub fn expire(desk: &CommandDesk, id: &str, now: prost_types::Timestamp) -> Option<CommandRecord> {
    let reason = desk.late_reason();
    let mut record = desk.take(id)?;
    let command = record.command.as_mut()?;
    let late = record.remaining.len() as u32;
    command.lamps_failed += late;
    if late > 0 && command.failures.len() < MAX_FAILURE_REASONS {
        command.failures.push(format!("{late} lamps: {reason}"));
    }
    command.updated_at = Some(now);
    record.remaining.clear();
    Some(finish(record))
}

fn finish(mut record: CommandRecord) -> CommandRecord {
    if let Some(command) = record.command.as_mut() {
        command.status = final_status(command.lamps_applied, command.lamps_failed) as i32;
    }
    record
}

/// The command a record carries (records always have one).
pub fn command_of(record: &CommandRecord) -> LightingCommand {
    record.command.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::lighting::LampFailure;

    fn record(id: &str, lamps: &[&str]) -> CommandRecord {
        let lamps: Vec<String> = lamps.iter().map(|s| s.to_string()).collect();
        CommandRecord {
            command: Some(LightingCommand {
                id: id.into(),
                status: CommandStatus::Pending as i32,
                lamps_total: lamps.len() as u32,
                ..Default::default()
            }),
            remaining: lamps.clone(),
            lamps,
        }
    }

    fn result(id: &str, applied: &[&str], failed: &[&str]) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            applied: applied.iter().map(|s| s.to_string()).collect(),
            failed: failed
                .iter()
                .map(|s| LampFailure { streetlight_id: s.to_string(), reason: "relay stuck".into() })
                .collect(),
        }
    }

    #[test]
    fn final_status_table() {
        assert_eq!(final_status(3, 0), CommandStatus::Applied);
        assert_eq!(final_status(0, 3), CommandStatus::Failed);
        assert_eq!(final_status(2, 1), CommandStatus::PartiallyApplied);
    }

    #[test]
    fn results_and_deadlines() {
        let desk = new_desk();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        track(&desk, record("c1", &["A", "B", "C"]));
        // A controller connecting later receives what is pending.
        desk.connect(tx);
        assert_eq!(rx.try_recv().unwrap().unwrap().streetlight_ids, ["A", "B", "C"]);
        let now = prost_types::Timestamp::default();
        let r = apply_result(&desk, &result("c1", &["A"], &[]), now).unwrap();
        assert_eq!((r.remaining.len(), r.command.unwrap().status), (2, CommandStatus::Pending as i32));
        assert!(
            apply_result(&desk, &result("c1", &["A"], &[]), now).is_none(),
            "a repeated confirmation changes nothing"
        );
        assert!(
            apply_result(&desk, &result("c1", &["Z"], &[]), now).is_none(),
            "a lamp outside the command changes nothing"
        );
        let r = apply_result(&desk, &result("c1", &["B"], &["C"]), now).unwrap();
        let c = r.command.unwrap();
        assert_eq!((c.lamps_applied, c.lamps_failed, c.status), (2, 1, CommandStatus::PartiallyApplied as i32));
        assert_eq!(c.failures, ["C: relay stuck"]);
        assert!(expire(&desk, "c1", now).is_none(), "finished commands do not expire");

        // A controller's reason is bounded and stripped of control characters.
        track(&desk, record("c3", &["A"]));
        let mut noisy = result("c3", &[], &["A"]);
        noisy.failed[0].reason = format!("bad\n{}", "x".repeat(1000));
        let c = apply_result(&desk, &noisy, now).unwrap().command.unwrap();
        assert_eq!(c.failures[0], format!("A: bad{}", "x".repeat(MAX_REASON_CHARS - 3)));

        track(&desk, record("c2", &["A", "B"]));
        apply_result(&desk, &result("c2", &["A"], &[]), now);
        let c = expire(&desk, "c2", now).unwrap().command.unwrap();
        assert_eq!((c.lamps_applied, c.lamps_failed, c.status), (1, 1, CommandStatus::PartiallyApplied as i32));
        assert!(c.failures[0].contains("before the deadline"), "{:?}", c.failures);
    }
}

//! The command desk: commands waiting for their lamps to be confirmed, and the lighting
//! controllers connected to receive them. In memory; every change it reports is persisted by the
//! caller (the store's `commands` tree holds the same records, so a restart restores the desk).

use proto::lighting::{CommandResult, CommandStatus, ControllerInstruction, LightingCommand};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tonic::Status;

use crate::store::CommandRecord;

/// Reasons kept per command (the counts are exact; the list is a sample for the operator).
const MAX_FAILURE_REASONS: usize = 20;
/// A controller's reason is text from outside: kept to this many characters, without controls.
const MAX_REASON_CHARS: usize = 200;

fn sanitized(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect()
}

pub type InstructionSender = mpsc::Sender<Result<ControllerInstruction, Status>>;

#[derive(Default)]
pub struct CommandDesk {
    controllers: Mutex<HashMap<u64, InstructionSender>>,
    next_controller: AtomicU64,
    pending: Mutex<HashMap<String, CommandRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The outcome once no lamp is left to confirm.
pub fn final_status(applied: u32, failed: u32) -> CommandStatus {
    match (applied, failed) {
        (_, 0) => CommandStatus::Applied,
        (0, _) => CommandStatus::Failed,
        _ => CommandStatus::PartiallyApplied,
    }
}

fn instruction(record: &CommandRecord) -> Option<ControllerInstruction> {
    let command = record.command.as_ref()?;
    Some(ControllerInstruction {
        command_id: command.id.clone(),
        action: command.action,
        streetlight_ids: record.remaining.clone(),
        deadline: command.deadline,
    })
}

impl CommandDesk {
    /// Commands restored from the store at start.
    pub fn restore(&self, records: Vec<CommandRecord>) {
        let mut pending = lock(&self.pending);
        for record in records {
            if let Some(id) = record.command.as_ref().map(|c| c.id.clone()) {
                pending.insert(id, record);
            }
        }
    }

    /// Starts tracking a new command and sends it to the connected controllers.
    pub fn track(&self, record: CommandRecord) {
        let Some(id) = record.command.as_ref().map(|c| c.id.clone()) else { return };
        let instruction = instruction(&record);
        lock(&self.pending).insert(id, record);
        if let Some(instruction) = instruction {
            self.dispatch(instruction);
        }
    }

    pub fn pending(&self) -> Vec<CommandRecord> {
        lock(&self.pending).values().cloned().collect()
    }

    fn dispatch(&self, instruction: ControllerInstruction) {
        let controllers = lock(&self.controllers);
        if controllers.is_empty() {
            tracing::warn!(command = %instruction.command_id, "no lighting controller connected; the command waits until its deadline");
        }
        for (id, sender) in controllers.iter() {
            if let Err(e) = sender.try_send(Ok(instruction.clone())) {
                tracing::warn!(controller = id, error = %e, command = %instruction.command_id, "controller not keeping up; instruction dropped (it is sent again when it reconnects)");
            }
        }
    }

    /// A controller connected: it gets every pending instruction, then the new ones.
    pub fn connect(&self, sender: InstructionSender) -> u64 {
        let id = self.next_controller.fetch_add(1, Ordering::Relaxed);
        for record in lock(&self.pending).values() {
            if let Some(instruction) = instruction(record) {
                let _ = sender.try_send(Ok(instruction));
            }
        }
        lock(&self.controllers).insert(id, sender);
        id
    }

    pub fn disconnect(&self, id: u64) {
        lock(&self.controllers).remove(&id);
    }

    pub fn controller_count(&self) -> usize {
        lock(&self.controllers).len()
    }

    /// Applies what a controller reports; returns the updated record when something changed.
    pub fn apply_result(&self, result: &CommandResult, now: prost_types::Timestamp) -> Option<CommandRecord> {
        let mut pending = lock(&self.pending);
        let record = pending.get_mut(&result.command_id)?;
        let mut remaining: BTreeSet<String> = record.remaining.iter().cloned().collect();
        let command = record.command.as_mut()?;
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
            return None;
        }
        command.updated_at = Some(now);
        record.remaining = remaining.into_iter().collect();
        let record = record.clone();
        if record.remaining.is_empty() {
            pending.remove(&result.command_id);
            return Some(finish(record));
        }
        Some(record)
    }

    /// The deadline passed: lamps not confirmed count as failed. `None` when already finished.
    pub fn expire(&self, id: &str, now: prost_types::Timestamp) -> Option<CommandRecord> {
        let mut record = lock(&self.pending).remove(id)?;
        let reason = if self.controller_count() == 0 {
            "no lighting controller connected before the deadline"
        } else {
            "not confirmed by the controller before the deadline"
        };
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
        let desk = CommandDesk::default();
        let (tx, mut rx) = mpsc::channel(8);
        desk.track(record("c1", &["A", "B", "C"]));
        // A controller connecting later receives what is pending.
        desk.connect(tx);
        assert_eq!(rx.try_recv().unwrap().unwrap().streetlight_ids, ["A", "B", "C"]);
        let now = prost_types::Timestamp::default();
        let r = desk.apply_result(&result("c1", &["A"], &[]), now).unwrap();
        assert_eq!((r.remaining.len(), r.command.unwrap().status), (2, CommandStatus::Pending as i32));
        assert!(
            desk.apply_result(&result("c1", &["A"], &[]), now).is_none(),
            "a repeated confirmation changes nothing"
        );
        assert!(
            desk.apply_result(&result("c1", &["Z"], &[]), now).is_none(),
            "a lamp outside the command changes nothing"
        );
        let r = desk.apply_result(&result("c1", &["B"], &["C"]), now).unwrap();
        let c = r.command.unwrap();
        assert_eq!((c.lamps_applied, c.lamps_failed, c.status), (2, 1, CommandStatus::PartiallyApplied as i32));
        assert_eq!(c.failures, ["C: relay stuck"]);
        assert!(desk.expire("c1", now).is_none(), "finished commands do not expire");

        // A controller's reason is bounded and stripped of control characters.
        desk.track(record("c3", &["A"]));
        let mut noisy = result("c3", &[], &["A"]);
        noisy.failed[0].reason = format!("bad\n{}", "x".repeat(1000));
        let c = desk.apply_result(&noisy, now).unwrap().command.unwrap();
        assert_eq!(c.failures[0], format!("A: bad{}", "x".repeat(MAX_REASON_CHARS - 3)));

        desk.track(record("c2", &["A", "B"]));
        desk.apply_result(&result("c2", &["A"], &[]), now);
        let c = desk.expire("c2", now).unwrap().command.unwrap();
        assert_eq!((c.lamps_applied, c.lamps_failed, c.status), (1, 1, CommandStatus::PartiallyApplied as i32));
        assert!(c.failures[0].contains("before the deadline"), "{:?}", c.failures);
    }
}

//! Valve commands: accepted durable and pending, sent to the valve controllers through the shared
//! desk (`runtime::controller`), settled by the controller's result or by their deadline. Each
//! change is written with its event; an applied command changes the network as operated.

use proto::event;
use proto::ids::{AssetId, CommuneId};
use proto::v1::event::Payload;
use proto::water::{
    SendValveCommandRequest, ValveAction, ValveCommand, ValveCommandStatus, ValveInstruction, ValveResult,
};
use runtime::controller::Desk;
use runtime::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::core::Water;
use crate::domain::{self, MAX_REASON_CHARS};
use crate::store::WriteBatch;

/// Pending valve commands and the controllers that receive them.
pub type ValveDesk = Desk<ValveCommand, ValveInstruction>;

/// A settled command whose save failed goes back on the desk; it expires no sooner than this.
const RETRY_AFTER_FAILED_SAVE: Duration = Duration::from_secs(5);

pub fn new_desk() -> ValveDesk {
    Desk::new("valve controller", |command: &ValveCommand| {
        Some(ValveInstruction {
            command_id: command.id.clone(),
            link_id: command.link_id.clone(),
            action: command.action,
            deadline: command.deadline,
        })
    })
}

impl Water {
    /// Accepts a valve command: durable and pending on return, then sent to the controllers.
    pub async fn send_valve_command(
        self: &Arc<Self>,
        request: &SendValveCommandRequest,
    ) -> Result<ValveCommand, Error> {
        let valid = domain::valve_request(request).map_err(Error::invalid)?;
        let command = {
            let state = self.state();
            // A link outside the requester's communes is, to the requester, not in the network:
            // the answer an unknown link gets (neither its commune nor its kind is told).
            let outside = state.model.place_element(&request.link_id).is_ok_and(|(commune, _, _)| {
                !request.allowed_communes.is_empty() && !request.allowed_communes.iter().any(|a| a == commune.as_str())
            });
            if outside {
                return Err(Error::invalid(crate::model::not_in_network(&request.link_id)));
            }
            state.model.operable(&request.link_id).map_err(Error::invalid)?;
            let (commune, _, dma) = state.model.place_element(&request.link_id).map_err(Error::invalid)?;
            let now = SystemTime::now();
            ValveCommand {
                id: uuid::Uuid::now_v7().to_string(),
                commune: commune.to_string(),
                link_id: request.link_id.clone(),
                action: valid.action as i32,
                requested_by: valid.requested_by,
                reason: request.reason.clone(),
                requested_at: Some(event::timestamp(now)),
                updated_at: Some(event::timestamp(now)),
                deadline: Some(event::timestamp(now + Duration::from_secs(u64::from(valid.timeout_s)))),
                status: ValveCommandStatus::Pending as i32,
                failure: String::new(),
                applied_by: String::new(),
                dma,
            }
        };
        self.save_command(&command, None).await?;
        tracing::info!(command = %command.id, link = %command.link_id, action = ?valid.action, by = %command.requested_by, "valve command pending");
        self.desk.track(command.id.clone(), command.clone());
        self.clone().expire_at_deadline(&command);
        Ok(command)
    }

    pub fn command(&self, id: &str) -> Result<ValveCommand, Error> {
        self.store.command(id)?.ok_or_else(|| Error::not_found(format!("valve command {id} does not exist")))
    }

    pub(crate) async fn save_command(&self, command: &ValveCommand, link: Option<(String, bool)>) -> Result<(), Error> {
        let commune = CommuneId::parse(&command.commune).map_err(Error::internal)?;
        let asset = AssetId::parse(&command.id).map_err(Error::internal)?;
        let mut batch = WriteBatch::default();
        batch.events.push(event::check(event::new_event(
            &commune,
            &asset,
            command.updated_at.unwrap_or_else(|| event::timestamp(SystemTime::now())),
            None,
            Payload::ValveCommand(command.clone()),
        ))?);
        batch.commands.push(command.clone());
        batch.links.extend(link);
        self.store.write(batch)?;
        self.flush().await
    }

    /// Saves a command that is no longer pending. The desk let go of it first (so that a result
    /// and the deadline cannot both settle it); when the save fails it takes it back, with its
    /// deadline again, and the controller's retry or the deadline settles it then. (A store
    /// that failed keeps failing until the process restarts: see `runtime::store_fault`.)
    async fn save_settled(self: &Arc<Self>, command: ValveCommand, link: Option<(String, bool)>) -> Result<(), Error> {
        let saved = self.save_command(&command, link).await;
        if saved.is_err() {
            let mut pending = command;
            pending.status = ValveCommandStatus::Pending as i32;
            pending.failure.clear();
            pending.applied_by.clear();
            // Its deadline again, not sooner than a few seconds: a store that refuses every write
            // must not be asked again in a loop.
            let retry = SystemTime::now() + RETRY_AFTER_FAILED_SAVE;
            let at = pending.deadline.and_then(|d| SystemTime::try_from(d).ok()).map_or(retry, |d| d.max(retry));
            self.clone().expire_at(pending.id.clone(), Some(event::timestamp(at)));
            self.desk.restore([(pending.id.clone(), pending)]);
        }
        saved
    }

    /// What a controller reports. A result for a command no longer pending is ignored.
    pub async fn valve_result(self: &Arc<Self>, controller: &str, result: &ValveResult) -> Result<(), Error> {
        let id = AssetId::parse_as("command id", &result.command_id).map_err(|e| Error::invalid(e.to_string()))?;
        let Some(mut command) = self.desk.take(id.as_str()) else {
            return match self.store.command(id.as_str())? {
                Some(_) => Ok(()),
                None => Err(Error::not_found(format!("valve command {id} does not exist"))),
            };
        };
        command.updated_at = Some(event::timestamp(SystemTime::now()));
        command.applied_by = controller.chars().filter(|c| !c.is_control()).take(64).collect();
        let link = if result.applied {
            command.status = ValveCommandStatus::Applied as i32;
            Some((command.link_id.clone(), command.action == ValveAction::Close as i32))
        } else {
            command.status = ValveCommandStatus::Failed as i32;
            let reason: String = result.reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect();
            command.failure = if reason.is_empty() { "refused by the field unit".into() } else { reason };
            None
        };
        tracing::info!(command = %command.id, status = command.status, "valve command result");
        self.save_settled(command, link).await
    }

    pub(crate) fn expire_at_deadline(self: Arc<Self>, command: &ValveCommand) {
        self.expire_at(command.id.clone(), command.deadline);
    }

    /// Fails the command at `at` if it is still pending then.
    fn expire_at(self: Arc<Self>, id: String, at: Option<prost_types::Timestamp>) {
        let stop = self.shutdown.clone();
        runtime::controller::at_deadline(at, stop, async move {
            let reason = self.desk.late_reason();
            let Some(mut command) = self.desk.take(&id) else { return };
            command.status = ValveCommandStatus::Failed as i32;
            command.updated_at = Some(event::timestamp(SystemTime::now()));
            command.failure = reason;
            if let Err(e) = self.save_settled(command, None).await {
                tracing::error!(command = %id, error = %e, "could not record the command's expiry");
            }
        });
    }
}

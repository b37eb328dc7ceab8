//! Field controllers (lamp cabinets, valve actuators) and the commands they carry out, written
//! once for every service that commands the field:
//!
//! - a [`Desk`]: the commands still pending, by id, and the controllers connected to receive
//!   them (each gets every pending instruction when it connects, then the new ones);
//! - [`at_deadline`]: a command's expiry, run once its deadline passes (unless the service stops);
//! - [`session`]: a controller's gRPC session (a hello naming the controller, then results).
//!
//! The desk is memory; the service persists every change it reports (its store holds the same
//! records, and the desk is restored from them at start). What a command and its instruction are
//! stays the service's own: the desk is generic over both.

use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Where a controller's instructions go (a gRPC response stream).
pub type InstructionSender<I> = mpsc::Sender<Result<I, Status>>;
/// A controller session's response stream.
pub type InstructionStream<I> = Pin<Box<dyn futures::Stream<Item = Result<I, Status>> + Send>>;

/// Instructions queued for one controller before it counts as not keeping up.
const CONTROLLER_QUEUE: usize = 1024;
/// A controller id is text from outside: 1 to this many characters, without controls.
const MAX_CONTROLLER_ID_CHARS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a change did to a pending command (see [`Desk::settle`]).
pub enum Settled {
    Unchanged,
    Changed,
    Finished,
}

/// Pending commands (`C`) and the controllers that receive their instructions (`I`).
pub struct Desk<C, I> {
    /// Names the controllers in logs and in expiry reasons ("lighting controller").
    controller: &'static str,
    /// The instruction a pending command sends (none once nothing is left to do).
    instruction: fn(&C) -> Option<I>,
    pending: Mutex<HashMap<String, C>>,
    controllers: Mutex<HashMap<u64, InstructionSender<I>>>,
    next_controller: AtomicU64,
}

impl<C: Clone, I: Clone> Desk<C, I> {
    pub fn new(controller: &'static str, instruction: fn(&C) -> Option<I>) -> Self {
        Desk {
            controller,
            instruction,
            pending: Mutex::new(HashMap::new()),
            controllers: Mutex::new(HashMap::new()),
            next_controller: AtomicU64::new(0),
        }
    }

    /// Commands restored from the store at start (not sent: controllers get them on connecting).
    pub fn restore(&self, commands: impl IntoIterator<Item = (String, C)>) {
        lock(&self.pending).extend(commands);
    }

    /// Starts tracking a new command and sends it to the connected controllers.
    pub fn track(&self, id: String, command: C) {
        let instruction = (self.instruction)(&command);
        lock(&self.pending).insert(id.clone(), command);
        if let Some(instruction) = instruction {
            self.dispatch(&id, instruction);
        }
    }

    pub fn pending(&self) -> Vec<C> {
        lock(&self.pending).values().cloned().collect()
    }

    /// Changes a pending command in place under the desk's lock; a command `change` says is
    /// finished leaves the desk in the same step, so that its deadline cannot finish it too.
    /// Returns the command as changed and whether it finished; `None` when it is not pending or
    /// `change` changed nothing.
    pub fn settle(&self, id: &str, change: impl FnOnce(&mut C) -> Settled) -> Option<(C, bool)> {
        let mut pending = lock(&self.pending);
        let command = pending.get_mut(id)?;
        match change(command) {
            Settled::Unchanged => None,
            Settled::Changed => Some((command.clone(), false)),
            Settled::Finished => pending.remove(id).map(|c| (c, true)),
        }
    }

    /// Stops tracking a command (finished, or expired); `None` when it was not pending.
    pub fn take(&self, id: &str) -> Option<C> {
        lock(&self.pending).remove(id)
    }

    fn dispatch(&self, id: &str, instruction: I) {
        let controllers = lock(&self.controllers);
        if controllers.is_empty() {
            tracing::warn!(command = %id, "no {} connected; the command waits until its deadline", self.controller);
        }
        for (session, sender) in controllers.iter() {
            if let Err(e) = sender.try_send(Ok(instruction.clone())) {
                tracing::warn!(session, error = %e, command = %id, "{} not keeping up; instruction dropped (it is sent again when it reconnects)", self.controller);
            }
        }
    }

    /// A controller connected: it gets every pending instruction, then the new ones. The pending
    /// list is held while it joins, so that a command tracked meanwhile is not missed (it may
    /// reach it twice: a controller applies an instruction it already applied as a no-op).
    pub fn connect(&self, sender: InstructionSender<I>) -> u64 {
        let id = self.next_controller.fetch_add(1, Ordering::Relaxed);
        let pending = lock(&self.pending);
        for instruction in pending.values().filter_map(self.instruction) {
            let _ = sender.try_send(Ok(instruction));
        }
        lock(&self.controllers).insert(id, sender);
        id
    }

    pub fn disconnect(&self, session: u64) {
        lock(&self.controllers).remove(&session);
    }

    pub fn controller_count(&self) -> usize {
        lock(&self.controllers).len()
    }

    /// Why a command's deadline passed without its result, as the operator reads it.
    pub fn late_reason(&self) -> String {
        if self.controller_count() == 0 {
            format!("no {} connected before the deadline", self.controller)
        } else {
            format!("not confirmed by the {} before the deadline", self.controller)
        }
    }
}

/// Runs `expire` once `deadline` has passed (at once when it has, or when it is missing), unless
/// `stop` is cancelled first: a command pending at shutdown expires after the restart.
pub fn at_deadline(
    deadline: Option<prost_types::Timestamp>,
    stop: CancellationToken,
    expire: impl Future<Output = ()> + Send + 'static,
) {
    let wait = deadline
        .and_then(|d| SystemTime::try_from(d).ok())
        .and_then(|d| d.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(wait) => expire.await,
            _ = stop.cancelled() => {}
        }
    });
}

/// What a controller's message is to the session.
pub enum FromController<R> {
    Hello {
        controller_id: String,
    },
    Result(R),
    /// Anything else (an empty message).
    Other,
}

/// Serves one controller's session: the first message must be a hello naming the controller;
/// every later one a result, handed to `on_result` with the controller's id. The first refused
/// message ends the session with its error; the controller leaves the desk when its stream ends.
pub async fn session<M, C, I, R, H, F, E>(
    mut inbound: Streaming<M>,
    desk: Arc<Desk<C, I>>,
    read: fn(M) -> FromController<R>,
    on_result: H,
) -> Result<InstructionStream<I>, Status>
where
    M: Send + 'static,
    C: Clone + Send + 'static,
    I: Clone + Send + 'static,
    R: Send + 'static,
    H: Fn(String, R) -> F + Send + 'static,
    F: Future<Output = Result<(), E>> + Send,
    E: Into<Status>,
{
    let controller_id = match inbound.message().await?.map(read) {
        Some(FromController::Hello { controller_id })
            if !controller_id.trim().is_empty()
                && controller_id.chars().count() <= MAX_CONTROLLER_ID_CHARS
                && !controller_id.chars().any(char::is_control) =>
        {
            controller_id
        }
        _ => {
            return Err(Status::invalid_argument(format!(
                "a controller session starts with a hello carrying the controller id (1 to {MAX_CONTROLLER_ID_CHARS} characters of text)"
            )));
        }
    };
    let (sender, receiver) = mpsc::channel(CONTROLLER_QUEUE);
    let session = desk.connect(sender.clone());
    tracing::info!(controller = %controller_id, "{} connected", desk.controller);
    tokio::spawn(async move {
        while let Some(message) = inbound.next().await {
            let outcome = match message.map(read) {
                Ok(FromController::Result(result)) => {
                    on_result(controller_id.clone(), result).await.map_err(Into::into)
                }
                Ok(_) => Err(Status::invalid_argument("only results are expected after the hello")),
                Err(status) => {
                    tracing::info!(controller = %controller_id, error = %status, "controller stream ended");
                    break;
                }
            };
            if let Err(status) = outcome {
                tracing::warn!(controller = %controller_id, error = %status, "controller message refused");
                let _ = sender.send(Err(status)).await;
                break;
            }
        }
        desk.disconnect(session);
        tracing::info!(controller = %controller_id, "{} disconnected", desk.controller);
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desk() -> Desk<(String, u32), String> {
        Desk::new("test controller", |(id, left): &(String, u32)| (*left > 0).then(|| id.clone()))
    }

    #[test]
    fn a_controller_gets_what_is_pending_then_what_comes() {
        let desk = desk();
        desk.restore([("a".to_owned(), ("a".to_owned(), 1))]);
        desk.track("done".into(), ("done".into(), 0));
        let (tx, mut rx) = mpsc::channel(8);
        let session = desk.connect(tx);
        assert_eq!(rx.try_recv().expect("pending").expect("ok"), "a");
        assert!(rx.try_recv().is_err(), "a command with nothing left sends nothing");
        desk.track("b".into(), ("b".into(), 2));
        assert_eq!(rx.try_recv().expect("new").expect("ok"), "b");
        let step = |c: &mut (String, u32)| {
            c.1 -= 1;
            if c.1 == 0 { Settled::Finished } else { Settled::Changed }
        };
        assert_eq!(desk.settle("b", step), Some((("b".to_owned(), 1), false)));
        assert_eq!(desk.settle("b", |_| Settled::Unchanged), None, "nothing changed");
        assert_eq!(desk.settle("b", step), Some((("b".to_owned(), 0), true)));
        assert_eq!(desk.settle("b", step), None, "a finished command left the desk");
        desk.track("b".into(), ("b".into(), 1));
        assert_eq!(desk.take("b"), Some(("b".to_owned(), 1)));
        assert_eq!(desk.take("b"), None, "a command is finished once");
        assert!(desk.late_reason().starts_with("not confirmed by the test controller"));
        desk.disconnect(session);
        assert_eq!(desk.late_reason(), "no test controller connected before the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_runs_its_expiry_unless_the_service_stops() {
        let (fired, mut fired_rx) = mpsc::channel(2);
        let soon = prost_types::Timestamp::from(SystemTime::now() + Duration::from_secs(60));
        let stop = CancellationToken::new();
        let tx = fired.clone();
        at_deadline(Some(soon), stop.clone(), async move {
            let _ = tx.send("expired").await;
        });
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(fired_rx.recv().await, Some("expired"));
        let stopped = CancellationToken::new();
        at_deadline(Some(soon), stopped.clone(), async move {
            let _ = fired.send("expired after stop").await;
        });
        stopped.cancel();
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(fired_rx.try_recv().is_err(), "nothing expires once the service stops");
    }
}

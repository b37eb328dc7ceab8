//! The live state shared by the consumer and the WebSocket sessions: the view, and the broadcast
//! of its deltas. A session subscribes and takes its snapshot under the same lock that the
//! consumer holds while it applies and broadcasts, so a client sees every delta after its
//! snapshot's `seq` and none before.

use proto::event::CheckedEvent;
use proto::live::{AlarmState, AssetState, AuditEntry, CommandState, KpiState, ServerFrame, ServerMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};

use crate::view::{Change, OperationsView};

/// Deltas a session may fall behind before it gets a fresh snapshot instead.
pub const DELTA_BUFFER: usize = 8192;

pub struct Live {
    inner: Mutex<Inner>,
    /// The sequence the view is current at, for callers that wait for their own write.
    applied: watch::Sender<u64>,
}

struct Inner {
    view: OperationsView,
    deltas: broadcast::Sender<Arc<str>>,
}

/// What a batch changed, for the store. `None` removes (a closed alarm, an evicted command).
#[derive(Default)]
pub struct Persist {
    pub assets: HashMap<String, AssetState>,
    pub alarms: HashMap<String, Option<AlarmState>>,
    pub commands: HashMap<String, Option<CommandState>>,
    pub kpis: HashMap<String, KpiState>,
    pub audit: Vec<AuditEntry>,
    pub applied_seq: u64,
}

/// One received event: its stream sequence and what it decoded to.
pub enum Received {
    Event(Box<CheckedEvent>),
    /// Could not be applied (the reason is logged by the consumer); only its sequence counts.
    Refused,
}

impl Live {
    pub fn new(view: OperationsView) -> Live {
        let (deltas, _) = broadcast::channel(DELTA_BUFFER);
        let (applied, _) = watch::channel(view.applied_seq());
        Live { inner: Mutex::new(Inner { view, deltas }), applied }
    }

    /// Waits until the view has applied the event at `seq` (or `timeout` passes); returns whether
    /// it has.
    pub async fn wait_applied(&self, seq: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// Reads the view under its lock.
    pub fn read<T>(&self, f: impl FnOnce(&OperationsView) -> T) -> T {
        f(&self.lock().view)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the view half-applied in a way that matters
        // more than stopping: keep serving what is there.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn applied_seq(&self) -> u64 {
        self.lock().view.applied_seq()
    }

    pub fn asset_count(&self) -> usize {
        self.lock().view.asset_count()
    }

    /// Replaces the view (after the stream it was built from disappeared).
    pub fn reset(&self) {
        self.lock().view = OperationsView::default();
    }

    /// Applies a batch in stream order and broadcasts one delta per applied event. Returns what
    /// changed and the sequence the view is now current at, for the store.
    pub fn apply(&self, batch: Vec<(u64, Received)>) -> Persist {
        let mut persist = Persist::default();
        let mut inner = self.lock();
        for (seq, received) in batch {
            match received {
                Received::Refused => inner.view.skip(seq),
                Received::Event(event) => {
                    if let Some(applied) = inner.view.apply(&event, seq) {
                        let (mut asset, mut alarm, mut command, mut kpi) = (None, None, None, None);
                        match applied.change {
                            Change::Asset(key, state) => {
                                asset = Some(Box::new(state.clone()));
                                persist.assets.insert(key, state);
                            }
                            Change::Alarm(key, state) => {
                                alarm = Some(Box::new(state.clone()));
                                persist.alarms.insert(key, (!state.closed).then_some(state));
                            }
                            Change::Command(key, state, evicted) => {
                                command = Some(Box::new(state.clone()));
                                persist.commands.insert(key, Some(state));
                                persist.commands.extend(evicted.into_iter().map(|k| (k, None)));
                            }
                            Change::Kpi(key, state) => {
                                kpi = Some(Box::new(state.clone()));
                                persist.kpis.insert(key, state);
                            }
                        }
                        let frame = ServerFrame::new(ServerMessage::Delta {
                            seq,
                            event: applied.event,
                            asset,
                            alarm,
                            command,
                            kpi,
                        });
                        match serde_json::to_string(&frame) {
                            // No receiver is not an error: nobody is connected.
                            Ok(json) => drop(inner.deltas.send(Arc::from(json))),
                            Err(e) => tracing::error!(error = %e, seq, "cannot serialise a delta"),
                        }
                    }
                }
            }
        }
        persist.applied_seq = inner.view.applied_seq();
        persist.audit = inner.view.take_audit();
        self.applied.send_replace(persist.applied_seq);
        persist
    }

    /// A snapshot frame (JSON) and a receiver of every delta after it.
    pub fn subscribe(&self) -> (String, broadcast::Receiver<Arc<str>>) {
        let (seq, assets, alarms, commands, kpis, receiver) = {
            let inner = self.lock();
            let assets: Vec<AssetState> = inner.view.assets().cloned().collect();
            let alarms: Vec<AlarmState> = inner.view.alarms().cloned().collect();
            let commands: Vec<CommandState> = inner.view.commands().cloned().collect();
            let kpis: Vec<KpiState> = inner.view.kpis().cloned().collect();
            (inner.view.applied_seq(), assets, alarms, commands, kpis, inner.deltas.subscribe())
        };
        let frame = ServerFrame::new(ServerMessage::Snapshot { seq, assets, alarms, commands, kpis });
        let json = serde_json::to_string(&frame).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a snapshot");
            String::new()
        });
        (json, receiver)
    }
}

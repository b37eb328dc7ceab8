//! The live state shared by the consumer and the WebSocket sessions: the view, and the broadcast
//! of its deltas. A session subscribes and takes its snapshot under the same lock that the
//! consumer holds while it applies and broadcasts, so a client sees every delta after its
//! snapshot's `seq` and none before.

use proto::event::CheckedEvent;
use proto::live::{AssetState, ServerFrame, ServerMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

use crate::view::OperationsView;

/// Deltas a session may fall behind before it gets a fresh snapshot instead.
pub const DELTA_BUFFER: usize = 8192;

pub struct Live {
    inner: Mutex<Inner>,
}

struct Inner {
    view: OperationsView,
    deltas: broadcast::Sender<Arc<str>>,
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
        Live { inner: Mutex::new(Inner { view, deltas }) }
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

    /// Applies a batch in stream order and broadcasts one delta per applied event. Returns the
    /// assets changed and the sequence the view is now current at, for the store.
    pub fn apply(&self, batch: Vec<(u64, Received)>) -> (HashMap<String, AssetState>, u64) {
        let mut changed = HashMap::new();
        let mut inner = self.lock();
        for (seq, received) in batch {
            match received {
                Received::Refused => inner.view.skip(seq),
                Received::Event(event) => {
                    if let Some(applied) = inner.view.apply(&event, seq) {
                        let frame = ServerFrame::new(ServerMessage::Delta {
                            seq,
                            event: applied.event,
                            asset: Box::new(applied.asset.clone()),
                        });
                        match serde_json::to_string(&frame) {
                            // No receiver is not an error: nobody is connected.
                            Ok(json) => drop(inner.deltas.send(Arc::from(json))),
                            Err(e) => tracing::error!(error = %e, seq, "cannot serialise a delta"),
                        }
                        changed.insert(applied.key, applied.asset);
                    }
                }
            }
        }
        (changed, inner.view.applied_seq())
    }

    /// A snapshot frame (JSON) and a receiver of every delta after it.
    pub fn subscribe(&self) -> (String, broadcast::Receiver<Arc<str>>) {
        let (seq, assets, receiver) = {
            let inner = self.lock();
            let assets: Vec<AssetState> = inner.view.assets().cloned().collect();
            (inner.view.applied_seq(), assets, inner.deltas.subscribe())
        };
        let frame = ServerFrame::new(ServerMessage::Snapshot { seq, assets });
        let json = serde_json::to_string(&frame).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a snapshot");
            String::new()
        });
        (json, receiver)
    }
}

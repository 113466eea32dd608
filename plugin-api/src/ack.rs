//! End-to-end acknowledgement of a request's metrics, in the manner of Vector's finalizers.
//!
//! The receiver makes one [`Ack`] per request and puts it in the batch. Every copy and every part
//! of that batch (fan-out, batching, splitting) holds a clone. When the last clone is dropped, that
//! is when every exporter is done with the metrics, the [`AckReceiver`] learns whether all of them
//! were delivered. Dropping is the signal, so no path can forget to acknowledge.

use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// What became of a request's metrics once every exporter was done with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every exporter stored or sent them (or a filter dropped them on purpose).
    Delivered,
    /// At least one exporter gave up on them; the reason of the first failure.
    Failed(String),
}

/// A shared handle on one request's delivery; clone it into every batch that carries its metrics.
#[derive(Clone, Debug)]
pub struct Ack(Arc<AckState>);

#[derive(Debug)]
struct AckState {
    failure: Mutex<Option<String>>,
    notify: Mutex<Option<oneshot::Sender<Delivery>>>,
}

/// Resolves when every clone of its [`Ack`] is gone.
pub type AckReceiver = oneshot::Receiver<Delivery>;

impl Ack {
    pub fn new() -> (Ack, AckReceiver) {
        let (tx, rx) = oneshot::channel();
        let state = AckState {
            failure: Mutex::new(None),
            notify: Mutex::new(Some(tx)),
        };
        (Ack(Arc::new(state)), rx)
    }

    /// Marks the request's metrics as not delivered; the first reason wins.
    pub fn fail(&self, reason: &str) {
        let mut failure = self.0.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert_with(|| reason.to_owned());
    }
}

impl Drop for AckState {
    fn drop(&mut self) {
        let notify = self.notify.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = notify.take() {
            let failure = self.failure.get_mut().unwrap_or_else(|e| e.into_inner());
            let delivery = match failure.take() {
                Some(reason) => Delivery::Failed(reason),
                None => Delivery::Delivered,
            };
            // The receiver may have stopped waiting (no durable acknowledgement): nothing to tell.
            let _ = tx.send(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_when_the_last_clone_drops() {
        let (ack, mut rx) = Ack::new();
        let copy = ack.clone();
        drop(ack);
        assert!(rx.try_recv().is_err(), "a clone is still alive");
        drop(copy);
        assert_eq!(rx.try_recv().unwrap(), Delivery::Delivered);
    }

    #[test]
    fn a_failure_in_any_clone_is_reported() {
        let (ack, mut rx) = Ack::new();
        let copy = ack.clone();
        copy.fail("disk full");
        copy.fail("second reason");
        drop(copy);
        drop(ack);
        assert_eq!(rx.try_recv().unwrap(), Delivery::Failed("disk full".into()));
    }
}

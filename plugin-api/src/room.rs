//! Room: how many more metrics a component that holds them (a `batch` processor, an exporter's
//! queue) can take. The engine asks it before a request's body is read, and reserves from it, in
//! every pipeline at once, before the request's metrics go in: so a request is taken by every
//! pipeline it enters or by none, and a full pipeline costs a refusal, not a decode.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bound on the metrics a component holds.
#[derive(Debug)]
pub struct Room {
    capacity: usize,
    free: Arc<Semaphore>,
}

impl Room {
    /// Room for `capacity` metrics (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(capacity: usize) -> Arc<Room> {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Arc::new(Room {
            capacity,
            free: Arc::new(Semaphore::new(capacity)),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Metrics held now.
    pub fn held(&self) -> usize {
        self.capacity - self.free.available_permits()
    }

    pub fn is_full(&self) -> bool {
        self.free.available_permits() == 0
    }

    /// Waits until it is not full, at most `wait`; false if it still is.
    pub async fn wait_for_room(&self, wait: Duration) -> bool {
        if !self.is_full() {
            return true;
        }
        // The semaphore is fair: waiting for one permit queues behind earlier waiters.
        let waited = tokio::time::timeout(wait, self.free.acquire()).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Takes room for `metrics`, waiting at most `wait` for it; None if there was not enough.
    pub async fn take_within(&self, metrics: usize, wait: Duration) -> Option<Permit> {
        if let Some(permit) = self.try_take(metrics) {
            return Some(permit);
        }
        let count = u32::try_from(metrics).ok()?;
        let taking = self.free.clone().acquire_many_owned(count);
        let permit = tokio::time::timeout(wait, taking).await.ok()?.ok()?;
        Some(Permit {
            room: self.free.clone(),
            permit: Some(permit),
        })
    }

    /// Takes room for `metrics`, if there is that much; given back when the permit drops.
    pub fn try_take(&self, metrics: usize) -> Option<Permit> {
        let metrics = u32::try_from(metrics).ok()?;
        let permit = self.free.clone().try_acquire_many_owned(metrics).ok()?;
        Some(Permit {
            room: self.free.clone(),
            permit: Some(permit),
        })
    }

    fn is(&self, permit: &Permit) -> bool {
        Arc::ptr_eq(&self.free, &permit.room)
    }

    /// The room reserved for a batch in this component, trimmed to the batch's size; or new room
    /// taken for it when none was reserved (a batch handed on later, by a flusher), waiting at
    /// most `wait` for it. None when there is not enough.
    pub async fn take_for(&self, batch: &crate::Batch, wait: Duration) -> Option<Permit> {
        let metrics = batch.len();
        let mut permit = match batch.take_reserved(self) {
            Some(permit) => permit,
            None => return self.take_within(metrics, wait).await,
        };
        if permit.metrics() > metrics {
            permit.split(permit.metrics() - metrics);
        } else if permit.metrics() < metrics {
            permit.merge(self.try_take(metrics - permit.metrics())?);
        }
        Some(permit)
    }
}

/// A share of a [`Room`], held while the metrics it stands for are held.
#[derive(Debug)]
pub struct Permit {
    room: Arc<Semaphore>,
    /// None for a share of nothing.
    permit: Option<OwnedSemaphorePermit>,
}

impl Permit {
    /// How many metrics it stands for.
    pub fn metrics(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Splits off `metrics` of it into a permit of their own (all of it if it has fewer).
    pub fn split(&mut self, metrics: usize) -> Permit {
        let metrics = metrics.min(self.metrics());
        let permit = match self.permit.as_mut() {
            Some(permit) if metrics == permit.num_permits() => self.permit.take(),
            Some(permit) => permit.split(metrics),
            None => None,
        };
        Permit {
            room: self.room.clone(),
            permit,
        }
    }

    /// Adds another permit of the same room to this one.
    pub fn merge(&mut self, other: Permit) {
        debug_assert!(Arc::ptr_eq(&self.room, &other.room));
        match (self.permit.as_mut(), other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.permit = theirs,
            (_, None) => {}
        }
    }
}

/// Room reserved for a request in one component, until that component takes it. Every copy of
/// the request's batch carries it; whatever is not taken is given back once the request has been
/// handed to its pipelines.
#[derive(Debug)]
pub struct Reservation(Mutex<Option<Permit>>);

impl Reservation {
    pub fn new(permit: Permit) -> Arc<Reservation> {
        Arc::new(Reservation(Mutex::new(Some(permit))))
    }

    /// Gives back what was not taken.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub(crate) fn take_if_of(&self, room: &Room) -> Option<Permit> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|p| room.is(p)) {
            slot.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_give_room_back_when_dropped() {
        let room = Room::new(10);
        let mut permit = room.try_take(6).unwrap();
        assert!(room.try_take(5).is_none());
        let part = permit.split(2);
        assert_eq!((permit.metrics(), part.metrics()), (4, 2));
        drop(part);
        assert_eq!(room.held(), 4);
        permit.merge(room.try_take(6).unwrap());
        assert!(room.is_full());
        drop(permit);
        assert_eq!(room.held(), 0);
    }

    #[test]
    fn a_reservation_is_taken_once_and_only_by_its_room() {
        let (room, other) = (Room::new(10), Room::new(10));
        let reservation = Reservation::new(room.try_take(3).unwrap());
        assert!(reservation.take_if_of(&other).is_none());
        let taken = reservation.take_if_of(&room).unwrap();
        assert_eq!(taken.metrics(), 3);
        assert!(reservation.take_if_of(&room).is_none());
    }
}

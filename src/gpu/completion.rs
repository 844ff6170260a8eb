//! A value that a wgpu callback delivers later (a read-back's mapping), as a future. In a
//! browser the event loop runs the callback; natively a device poll does.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// The callback's end: [`Deliver::send`] stores the value and wakes the task awaiting it.
pub(super) struct Deliver<T>(Arc<Mutex<Slot<T>>>);

/// The awaiting end.
pub(super) struct Completion<T>(Arc<Mutex<Slot<T>>>);

/// A connected pair.
pub(super) fn completion<T>() -> (Deliver<T>, Completion<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    (Deliver(slot.clone()), Completion(slot))
}

impl<T> Deliver<T> {
    pub(super) fn send(self, value: T) {
        let mut slot = self.0.lock().unwrap();
        slot.value = Some(value);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

impl<T> Completion<T> {
    /// The value if it has arrived, without waiting.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn try_take(&self) -> Option<T> {
        self.0.lock().unwrap().value.take()
    }
}

impl<T> Future for Completion<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.lock().unwrap();
        match slot.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

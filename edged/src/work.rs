//! The work gate a swap closes before the engine goes: requests count their work in it, and a
//! stopping generation hands its running engine to the next one as soon as no request has work
//! left that needs this generation's engine connection, data-directory lock or agents — usually
//! at once, with engine calls still waiting for their answers (those come back through the next
//! generation). From then on this generation starts no request: each one goes to the next
//! generation unanswered (see `http.rs`, "requeue").
//!
//! Owns: the count of work not yet handed to the engine, and the closed flag. Must not: know
//! what the work is (`http.rs` and `service.rs` take and drop the tickets).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Shared by the HTTP server, the service and the stop sequence of one generation.
#[derive(Debug, Default)]
pub struct WorkGate {
    state: Mutex<State>,
    quiet: Notify,
    /// Whether a request refused here can go to the next generation (the HTTP side has the
    /// connection hand-over): without it the gate never closes.
    requeue: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    open: usize,
}

/// One piece of work under way: a call whose engine line is not queued yet, a Privitty method, a
/// viewer request. Dropping it ends the work.
#[derive(Debug)]
pub struct Ticket(Arc<WorkGate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("work gate lock");
        state.open -= 1;
        if state.open == 0 {
            // One waiter at most (the stop sequence); the permit is kept if it is not waiting yet.
            self.0.quiet.notify_one();
        }
    }
}

impl Ticket {
    /// Splits this ticket into `n` (none: the work ended), one per call of a batch: the gate
    /// cannot close in between, since this one is still open.
    pub fn split(self, n: usize) -> Vec<Ticket> {
        let gate = self.0.clone();
        gate.state.lock().expect("work gate lock").open += n;
        drop(self);
        (0..n).map(|_| Ticket(gate.clone())).collect()
    }
}

impl WorkGate {
    pub fn new() -> Arc<WorkGate> {
        Arc::new(WorkGate::default())
    }

    /// A ticket for a request, or none once the gate is closed (the request goes to the next
    /// generation).
    pub fn enter(self: &Arc<Self>) -> Option<Ticket> {
        let mut state = self.state.lock().expect("work gate lock");
        if state.closed {
            return None;
        }
        state.open += 1;
        Some(Ticket(self.clone()))
    }

    /// Says that a refused request can go to the next generation.
    pub fn requeue_possible(&self) {
        self.requeue
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the engine may be gone: then no request starts here.
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("work gate lock").closed
    }

    /// Closes the gate as soon as no work is open; `false` (and still open) when work was still
    /// open after `timeout`, or when refused requests could not go anywhere.
    pub async fn close_when_quiet(&self, timeout: Duration) -> bool {
        if !self.requeue.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let closing = async {
            loop {
                let quiet = self.quiet.notified();
                {
                    let mut state = self.state.lock().expect("work gate lock");
                    if state.open == 0 {
                        state.closed = true;
                        return;
                    }
                }
                quiet.await;
            }
        };
        tokio::time::timeout(timeout, closing).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_closes_once_the_last_ticket_is_dropped_and_then_refuses_work() {
        let gate = WorkGate::new();
        gate.requeue_possible();
        let tickets = gate.enter().expect("open").split(2);
        let (first, second) = {
            let mut t = tickets.into_iter();
            (t.next().unwrap(), t.next().unwrap())
        };
        assert!(
            !gate.close_when_quiet(Duration::from_millis(20)).await,
            "work is open"
        );
        assert!(!gate.is_closed());
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close_when_quiet(Duration::from_secs(10)).await }
        });
        drop(first);
        assert!(gate.enter().is_some(), "still open while one ticket is out");
        drop(second);
        assert!(closing.await.unwrap(), "closed when the last one went");
        assert!(gate.is_closed());
        assert!(gate.enter().is_none(), "no work starts after the close");
    }

    #[tokio::test]
    async fn an_idle_gate_closes_at_once_unless_refused_requests_cannot_go_on() {
        let gate = WorkGate::new();
        assert!(!gate.close_when_quiet(Duration::from_secs(10)).await);
        assert!(
            !gate.is_closed(),
            "no connection hand-over: the gate stays open"
        );
        gate.requeue_possible();
        assert!(gate.enter().expect("open").split(0).is_empty());
        assert!(gate.close_when_quiet(Duration::ZERO).await);
        assert!(gate.is_closed());
    }
}

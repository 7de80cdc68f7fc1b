//! The process's one SQLite writer slot, handed to a provider's answer before anything else.
//!
//! SQLite allows one writer at a time. Queueing writers here instead of in SQLite's busy
//! handler wakes the next one the moment the slot is free (the busy handler sleeps in steps of
//! milliseconds). And the queue has one priority lane: a transaction that stores what a
//! provider answered (the provider has already invalidated the old secret, so until it commits
//! a crash loses the credential) goes before claims, deliveries and maintenance still waiting.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// How urgently a write transaction needs the writer slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePriority {
    /// Everything that can wait a few milliseconds without risk.
    Normal,
    /// Stores a provider's answer: served before every waiting [`WritePriority::Normal`] writer.
    ProviderAnswer,
}

/// A writer slot shared by every connection of the process (see the module doc).
#[derive(Debug, Default)]
pub struct WriterGate {
    state: Mutex<GateState>,
    /// Wakes one waiting provider answer.
    answer_turn: Condvar,
    /// Wakes one waiting ordinary writer.
    normal_turn: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    held: bool,
    answers_waiting: usize,
    /// Writers of either priority waiting for the slot.
    waiting: usize,
}

/// The writer slot, held until dropped.
#[derive(Debug)]
pub struct WriterSlot<'a> {
    gate: &'a WriterGate,
}

impl WriterGate {
    /// A free slot.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(GateState { held: false, answers_waiting: 0, waiting: 0 }),
            answer_turn: Condvar::new(),
            normal_turn: Condvar::new(),
        }
    }

    /// Waits for the slot: a [`WritePriority::Normal`] writer also waits while any provider
    /// answer is waiting.
    pub fn acquire(&self, priority: WritePriority) -> WriterSlot<'_> {
        let mut state = self.lock();
        if priority == WritePriority::ProviderAnswer {
            state.answers_waiting += 1;
        }
        state.waiting += 1;
        let turn = match priority {
            WritePriority::ProviderAnswer => &self.answer_turn,
            WritePriority::Normal => &self.normal_turn,
        };
        while state.held || (priority == WritePriority::Normal && state.answers_waiting > 0) {
            state = turn.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting -= 1;
        if priority == WritePriority::ProviderAnswer {
            state.answers_waiting -= 1;
        }
        state.held = true;
        WriterSlot { gate: self }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for WriterSlot<'_> {
    /// Frees the slot and wakes one waiter: an answer if any waits, else an ordinary writer (a
    /// woken writer that finds the slot taken again waits for the next release, which wakes
    /// another).
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.held = false;
        let answers_waiting = state.answers_waiting > 0;
        drop(state);
        if answers_waiting {
            self.gate.answer_turn.notify_one();
        } else {
            self.gate.normal_turn.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Starts a thread that takes the slot at `priority`, reports `label` once it holds it,
    /// and lets it go at once.
    fn writer(
        gate: &Arc<WriterGate>,
        priority: WritePriority,
        label: &'static str,
        order: &mpsc::Sender<&'static str>,
    ) {
        let (gate, order) = (gate.clone(), order.clone());
        std::thread::spawn(move || {
            let _slot = gate.acquire(priority);
            order.send(label).expect("test receives");
        });
    }

    /// Waits until `count` writers are queued on the gate.
    fn until_waiting(gate: &WriterGate, count: usize) {
        while gate.lock().waiting < count {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_waiting_provider_answer_goes_before_writers_that_queued_earlier() {
        let gate = Arc::new(WriterGate::new());
        let (order, received) = mpsc::channel();
        let held = gate.acquire(WritePriority::Normal);
        writer(&gate, WritePriority::Normal, "claim", &order);
        writer(&gate, WritePriority::Normal, "delivery", &order);
        until_waiting(&gate, 2);
        writer(&gate, WritePriority::ProviderAnswer, "answer", &order);
        until_waiting(&gate, 3);
        drop(held);
        let first = received.recv_timeout(Duration::from_secs(5)).expect("a writer runs");
        assert_eq!(first, "answer");
        let rest: Vec<_> =
            (0..2).map(|_| received.recv_timeout(Duration::from_secs(5)).expect("writer runs")).collect();
        assert!(rest.contains(&"claim") && rest.contains(&"delivery"), "{rest:?}");
    }

    #[test]
    fn the_slot_is_exclusive_whatever_the_priority() {
        let gate = Arc::new(WriterGate::new());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (gate, inside) = (gate.clone(), inside.clone());
                std::thread::spawn(move || {
                    let priority = if i % 2 == 0 { WritePriority::Normal } else { WritePriority::ProviderAnswer };
                    for _ in 0..200 {
                        let _slot = gate.acquire(priority);
                        let before = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(before, 0, "two writers held the slot at once");
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no writer panicked");
        }
    }
}

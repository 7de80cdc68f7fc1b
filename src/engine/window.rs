//! The scheduler's window: the next-due tokens it keeps in memory, most urgent first, so that
//! it can sleep until the earliest is due instead of asking the store again and again.
//!
//! The window is read again only when the data may have changed (a commit by another
//! connection, a wake-up from the API or the CLI), when it ran dry, or when a worker finished
//! and nothing in it is due.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::store::rotation::DueToken;

/// Tokens read into the window at most.
pub const WINDOW_SIZE: i64 = 512;

/// What the scheduler did with one due token of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A worker took it (or already has it): it leaves the window.
    Taken,
    /// Its provider has no free worker or asked for a pause: it stays.
    Kept,
    /// No worker is free at all: it stays, and so does everything after it.
    Full,
}

/// The next-due tokens in memory.
#[derive(Debug)]
pub struct Window {
    entries: Vec<DueToken>,
    truncated: bool,
    stale: bool,
    worker_done: bool,
    others_read: bool,
    /// Providers left out of the last read because they asked for a pause.
    held_at_read: HashSet<String>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            truncated: false,
            stale: true,
            worker_done: false,
            others_read: false,
            held_at_read: HashSet::new(),
        }
    }
}

impl Window {
    /// The data may have changed: read the window again before using it.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// A worker finished: its token may be due again soon (a retry), so read again once
    /// nothing in the window is due.
    pub fn note_worker_done(&mut self) {
        self.worker_done = true;
    }

    /// Notes which providers are paused now: the window must be read again once a provider that
    /// was paused when it was read is not any more, or that provider's due tokens (left out of
    /// the read) would wait for some unrelated change.
    pub fn note_held(&mut self, held: &HashSet<String>) {
        if !self.held_at_read.is_subset(held) {
            self.stale = true;
        }
    }

    /// Whether the window must be read again before dispatching at `now`.
    pub fn needs_read(&self, now: DateTime<Utc>) -> bool {
        let nothing_due = self.entries.first().is_none_or(|first| first.due_at > now);
        self.stale || (self.truncated && self.entries.is_empty()) || (self.worker_done && nothing_due)
    }

    /// Replaces the contents with a fresh read of at most [`WINDOW_SIZE`] tokens, which left out
    /// the tokens of the `held` providers.
    pub fn replace(&mut self, entries: Vec<DueToken>, held: HashSet<String>) {
        self.held_at_read = held;
        self.truncated = i64::try_from(entries.len()).unwrap_or(i64::MAX) >= WINDOW_SIZE;
        self.entries = entries;
        self.stale = false;
        self.worker_done = false;
        self.others_read = false;
    }

    /// Whether due tokens of other providers may be missing because this window is full of
    /// tokens whose providers are busy; true once per full read.
    pub fn may_hide_other_providers(&self) -> bool {
        self.truncated && !self.others_read
    }

    /// Adds the due tokens of other providers read after [`Window::may_hide_other_providers`].
    pub fn merge_other_providers(&mut self, extra: Vec<DueToken>) {
        self.others_read = true;
        for token in extra {
            if !self.entries.iter().any(|known| known.name == token.name) {
                self.entries.push(token);
            }
        }
        self.entries.sort_by_key(|token| token.due_at);
    }

    /// Offers every token due at `now` to `place`, most urgent first, and drops the taken ones.
    pub fn place_due(&mut self, now: DateTime<Utc>, mut place: impl FnMut(&DueToken) -> Placement) {
        let mut full = false;
        self.entries.retain(|token| {
            if full || token.due_at > now {
                return true;
            }
            match place(token) {
                Placement::Taken => false,
                Placement::Kept => true,
                Placement::Full => {
                    full = true;
                    true
                }
            }
        });
    }

    /// When the earliest token that is not due yet at `now` falls due.
    pub fn next_due_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.entries.iter().map(|token| token.due_at).find(|&at| at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn token(name: &str, provider: &str, due_in_seconds: i64, now: DateTime<Utc>) -> DueToken {
        DueToken {
            name: name.parse().unwrap(),
            provider_id: provider.to_owned(),
            due_at: now + TimeDelta::seconds(due_in_seconds),
        }
    }

    #[test]
    fn due_tokens_are_offered_most_urgent_first_and_only_taken_ones_leave() {
        let now = Utc::now();
        let mut window = Window::default();
        assert!(window.needs_read(now), "a new window is read first");
        window.replace(
            vec![token("a", "p", -2, now), token("b", "q", -1, now), token("c", "p", 30, now)],
            HashSet::new(),
        );
        assert!(!window.needs_read(now));
        let mut offered = Vec::new();
        window.place_due(now, |token| {
            offered.push(token.name.to_string());
            if token.provider_id == "p" { Placement::Taken } else { Placement::Kept }
        });
        assert_eq!(offered, ["a", "b"], "tokens not due yet are not offered");
        assert_eq!(window.next_due_after(now), Some(now + TimeDelta::seconds(30)));
        let mut again = Vec::new();
        window.place_due(now, |token| {
            again.push(token.name.to_string());
            Placement::Full
        });
        assert_eq!(again, ["b"], "the kept token is offered again; nothing after a full stop");
    }

    #[test]
    fn a_finished_worker_causes_a_read_only_once_nothing_is_due() {
        let now = Utc::now();
        let mut window = Window::default();
        window.replace(vec![token("a", "p", -1, now)], HashSet::new());
        window.note_worker_done();
        assert!(!window.needs_read(now), "something is still due: dispatch it first");
        window.place_due(now, |_| Placement::Taken);
        assert!(window.needs_read(now), "nothing due: look for a retry that fell due");
    }

    #[test]
    fn a_window_read_while_a_provider_was_paused_is_read_again_when_the_pause_ends() {
        let now = Utc::now();
        let mut window = Window::default();
        let paused: HashSet<String> = ["p".to_owned()].into();
        window.replace(vec![token("q1", "q", 60, now)], paused.clone());
        window.note_held(&paused);
        assert!(!window.needs_read(now), "still paused: p's tokens are rightly missing");
        window.note_held(&HashSet::new());
        assert!(window.needs_read(now), "p's pause ended: its due tokens must be read");
    }

    #[test]
    fn a_full_window_that_ran_dry_is_read_again_and_may_hide_other_providers_once() {
        let now = Utc::now();
        let mut window = Window::default();
        let many = (0..WINDOW_SIZE).map(|i| token(&format!("t{i}"), "busy", -1, now)).collect();
        window.replace(many, HashSet::new());
        assert!(window.may_hide_other_providers());
        window.merge_other_providers(vec![token("other", "idle", -5, now), token("t0", "busy", -1, now)]);
        assert!(!window.may_hide_other_providers(), "once per read");
        let mut first = None;
        window.place_due(now, |token| {
            first.get_or_insert_with(|| token.name.to_string());
            Placement::Taken
        });
        assert_eq!(first.as_deref(), Some("other"), "merged tokens are placed by urgency");
        assert!(window.needs_read(now), "a full window that ran dry is read again");
    }
}

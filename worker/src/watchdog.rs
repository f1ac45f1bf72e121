//! Self-fencing under static membership. Once it serves steps, a worker hears from the
//! coordinator all the time: every step, and a health check of every rank every 2 s. A
//! worker that hears nothing for `--coordinator-silence-s` is cut off (its host lost
//! the network, or the coordinator is gone) and may be replaced already; it stops serving
//! and exits with an error, so that its supervisor (systemd, Kubernetes) restarts it and
//! it registers again with the group the coordinator re-forms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// When the coordinator last called this worker, and whether silence counts yet.
#[derive(Debug)]
pub struct Contact {
    last: Mutex<Instant>,
    armed: AtomicBool,
    fenced: AtomicBool,
}

impl Contact {
    pub fn new() -> Arc<Contact> {
        Arc::new(Contact {
            last: Mutex::new(Instant::now()),
            armed: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        })
    }

    /// A call from the coordinator arrived.
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// The worker serves steps now: from here on, silence means it is cut off. (Before
    /// that, while the other ranks load, long quiet spells are normal.)
    pub fn arm(&self) {
        if !self.armed.swap(true, Ordering::Relaxed) {
            self.touch();
        }
    }

    /// How long the coordinator has been silent, once armed.
    fn silence(&self) -> Option<Duration> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        Some(
            self.last
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed(),
        )
    }

    /// Whether [`watch`] fenced this worker.
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }
}

/// Resolves once the coordinator has been silent for longer than `limit` (checked
/// every `limit / 10`, at least every 100 ms); marks `contact` fenced and returns how
/// long the silence lasted.
pub async fn watch(contact: Arc<Contact>, limit: Duration) -> Duration {
    let period = (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        if let Some(s) = contact.silence().filter(|s| *s > limit) {
            contact.fenced.store(true, Ordering::Relaxed);
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_counts_only_once_armed_and_calls_reset_it() {
        let c = Contact::new();
        let limit = Duration::from_secs(5);
        let w = tokio::spawn(watch(c.clone(), limit));
        // Not armed: any silence is fine (the other ranks may load for minutes).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!w.is_finished() && !c.fenced());
        c.arm();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.touch();
        }
        assert!(!w.is_finished() && !c.fenced());
        let silent = w.await.expect("watchdog");
        assert!(
            silent > limit && silent < limit + Duration::from_secs(2),
            "{silent:?}"
        );
        assert!(c.fenced());
    }
}

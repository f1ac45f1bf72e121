//! Bounded waiting: polling with a back-off that stays cheap for microsecond-scale collectives (decode all-reduces)
//! without burning a core for the whole op timeout.

use std::time::{Duration, Instant};

use super::NcclError;

/// Polls that only spin (each poll costs about a microsecond: an event query plus an atomic load in NCCL).
const SPIN_POLLS: u32 = 200;
/// Polls after the spinning phase that yield the thread instead.
const YIELD_POLLS: u32 = 200;
/// First and largest sleep once the op has taken long enough that latency no longer matters.
const MIN_SLEEP: Duration = Duration::from_micros(20);
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Back-off between polls: spin, then yield, then sleep 20 µs doubling up to 1 ms.
struct Backoff {
    polls: u32,
    sleep: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            polls: 0,
            sleep: MIN_SLEEP,
        }
    }

    fn snooze(&mut self) {
        self.polls = self.polls.saturating_add(1);
        if self.polls <= SPIN_POLLS {
            std::hint::spin_loop();
        } else if self.polls <= SPIN_POLLS + YIELD_POLLS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.sleep);
            self.sleep = (self.sleep * 2).min(MAX_SLEEP);
        }
    }
}

/// Calls `ready` until it returns `Ok(true)` (then `Ok`), returns an error (passed through), or `start + timeout`
/// passes (then [`NcclError::Timeout`] for `op`). `ready` is always called at least once, and once more after the
/// deadline, so work that finished during the last sleep is not reported as a timeout.
pub(super) fn poll_until(
    op: &'static str,
    start: Instant,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, NcclError>,
) -> Result<(), NcclError> {
    let mut backoff = Backoff::new();
    loop {
        let expired = start.elapsed() >= timeout;
        if ready()? {
            return Ok(());
        }
        if expired {
            return Err(NcclError::Timeout { op, after: timeout });
        }
        backoff.snooze();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_at_once() {
        let r = poll_until("t", Instant::now(), Duration::ZERO, || Ok(true));
        assert!(r.is_ok());
    }

    #[test]
    fn times_out_with_op_name() {
        let t = Duration::from_millis(20);
        let start = Instant::now();
        let r = poll_until("all_reduce_sum_f32", start, t, || Ok(false));
        assert!(start.elapsed() >= t);
        match r {
            Err(NcclError::Timeout { op, after }) => {
                assert_eq!(op, "all_reduce_sum_f32");
                assert_eq!(after, t);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn error_passes_through() {
        let r = poll_until("t", Instant::now(), Duration::from_secs(5), || {
            Err(NcclError::Aborted { reason: "x".into() })
        });
        assert!(matches!(r, Err(NcclError::Aborted { .. })));
    }

    #[test]
    fn becomes_ready_after_polls() {
        let mut n = 0;
        let r = poll_until("t", Instant::now(), Duration::from_secs(5), || {
            n += 1;
            Ok(n > 500)
        });
        assert!(r.is_ok());
        assert_eq!(n, 501);
    }
}

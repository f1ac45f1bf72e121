//! An opt-in step profiler for the GPU check: CUDA events recorded on the
//! backend's stream between operations, read back as GPU time per named
//! operation. Off (a no-op) unless [`CudaBackend::profile_start`] was called.

use std::collections::BTreeMap;
use std::sync::{MutexGuard, PoisonError};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;

use super::device::CudaBackend;
use super::error::CudaError;

/// Events of the profile being recorded: a start, then one per mark.
#[derive(Default)]
pub(crate) struct Profile {
    events: Vec<(&'static str, CudaEvent)>,
}

/// GPU milliseconds per operation name, and how many marks each had.
pub type ProfileTotals = BTreeMap<&'static str, (f64, usize)>;

impl CudaBackend {
    fn lock_profile(&self) -> MutexGuard<'_, Option<Profile>> {
        self.profile.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timed_event(&self) -> Result<CudaEvent, CudaError> {
        Ok(self
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
    }

    /// Starts recording: later [`CudaBackend::mark`] calls time the work
    /// enqueued since the previous mark.
    pub fn profile_start(&self) -> Result<(), CudaError> {
        let start = self.timed_event()?;
        *self.lock_profile() = Some(Profile {
            events: vec![("start", start)],
        });
        Ok(())
    }

    /// Ends the operation `name`: the work enqueued since the last mark is
    /// counted to it. Does nothing while no profile is recorded.
    pub fn mark(&self, name: &'static str) -> Result<(), CudaError> {
        let mut guard = self.lock_profile();
        if let Some(p) = guard.as_mut() {
            let e = self.timed_event()?;
            p.events.push((name, e));
        }
        Ok(())
    }

    /// Stops recording and returns the GPU time per operation (waits for
    /// the stream). Empty when no profile was started.
    pub fn profile_take(&self) -> Result<ProfileTotals, CudaError> {
        let Some(p) = self.lock_profile().take() else {
            return Ok(ProfileTotals::new());
        };
        let mut totals = ProfileTotals::new();
        for pair in p.events.windows(2) {
            let ms = pair[0].1.elapsed_ms(&pair[1].1)?;
            let e = totals.entry(pair[1].0).or_insert((0.0, 0));
            e.0 += f64::from(ms);
            e.1 += 1;
        }
        Ok(totals)
    }
}

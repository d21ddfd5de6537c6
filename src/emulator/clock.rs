//! Simulated time: the emulator's "now", which tests move forward on purpose.
//!
//! Token lifetimes, the rolling 24-hour API allocation and (later) generated CRM activity all
//! read this clock, so a test can cross a session timeout or a day boundary in milliseconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::record::Millis;

/// Where simulated time starts unless told otherwise: Monday 2026-01-05 09:00 UTC.
pub const DEFAULT_START_MS: Millis = 1_767_603_600_000;

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct SimClock {
    now_ms: AtomicI64,
}

impl SimClock {
    /// A clock showing `start_ms`.
    pub fn starting_at(start_ms: Millis) -> SimClock {
        SimClock {
            now_ms: AtomicI64::new(start_ms),
        }
    }

    /// The simulated time, UTC epoch milliseconds.
    pub fn now_ms(&self) -> Millis {
        self.now_ms.load(Ordering::SeqCst)
    }

    /// Moves time forward and returns the new time.
    pub fn advance(&self, by: Duration) -> Millis {
        let step = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms
            .fetch_add(step, Ordering::SeqCst)
            .saturating_add(step)
    }
}

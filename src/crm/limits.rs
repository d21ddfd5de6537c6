//! How fast and how much a connection may call its CRM.
//!
//! [`Pace`] spaces requests with a `governor` limiter sized from the config, and narrows it
//! to what the CRM's own rate headers say (HubSpot's `X-HubSpot-RateLimit-*`), so that steady
//! state stays under the limit instead of bouncing off 429s. [`Budget`] counts calls against
//! the daily allocation the CRM reports (Salesforce `Sforce-Limit-Info`, HubSpot's daily
//! headers) and stops a run at its configured share of it.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::config::settings::{CrmKind, LimitSettings};

/// The request rate of one connection.
pub(crate) struct Pace {
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// Set from HubSpot's headers when the window is nearly spent: no request before then.
    paused_until: Mutex<Option<Instant>>,
    /// The narrowest window limit seen so far, so a header only ever tightens the pace.
    window_limit: Mutex<Option<(u32, Duration)>>,
}

impl Pace {
    /// A pace of `requests_per_second` with `burst` above it.
    pub fn new(limits: &LimitSettings) -> Pace {
        let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Pace {
            limiter: RwLock::new(Arc::new(RateLimiter::direct(quota))),
            paused_until: Mutex::new(None),
            window_limit: Mutex::new(None),
        }
    }

    /// Waits until the next request may go.
    pub async fn ready(&self) {
        let pause = *lock(&self.paused_until);
        if let Some(until) = pause {
            tokio::time::sleep_until(until).await;
        }
        let limiter = self
            .limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        limiter.until_ready().await;
    }

    /// Waits out a 429's `Retry-After` (or the CRM's window) before anyone calls again.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = lock(&self.paused_until);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Reads HubSpot's window headers: narrows the limiter to stay under the window's limit,
    /// and pauses until the window turns when it is nearly spent.
    pub fn observe(&self, kind: CrmKind, headers: &HeaderMap) {
        if kind != CrmKind::Hubspot {
            return;
        }
        let (Some(max), Some(interval)) = (
            header_u64(headers, "x-hubspot-ratelimit-max"),
            header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds"),
        ) else {
            return;
        };
        let (Ok(max), interval) = (u32::try_from(max), Duration::from_millis(interval.max(1)))
        else {
            return;
        };
        self.narrow_to_window(max, interval);
        if header_u64(headers, "x-hubspot-ratelimit-remaining").is_some_and(|left| left <= 1) {
            self.pause_for(interval / 4);
        }
    }

    fn narrow_to_window(&self, max: u32, interval: Duration) {
        let mut known = lock(&self.window_limit);
        let per_second = |(max, interval): (u32, Duration)| f64::from(max) / interval.as_secs_f64();
        if known.is_some_and(|seen| per_second(seen) <= per_second((max, interval))) {
            return;
        }
        *known = Some((max, interval));
        // Over any window the limiter lets through burst + rate × window; keep that at 90% of
        // the CRM's limit, with a tenth of it as burst.
        let burst = (max / 10).max(1);
        let steady = (max * 8 / 10).max(1);
        let period = interval / steady;
        if let Some(quota) = Quota::with_period(period) {
            let quota = quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            *self.limiter.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(RateLimiter::direct(quota));
        }
    }
}

/// Calls made and allocation left, as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetUse {
    /// Calls this run has made.
    pub run_calls: u64,
    /// Calls the whole org or account has made today, as the CRM last said.
    pub org_used: Option<u64>,
    /// The daily allocation, as the CRM last said (or the configured tier's).
    pub org_limit: Option<u64>,
}

/// The daily API allocation of one connection and this run's share of it.
pub(crate) struct Budget {
    run_share: f64,
    org_ceiling: f64,
    state: Mutex<BudgetUse>,
}

impl Budget {
    /// A budget from the configured shares; HubSpot's tier gives the allocation up front.
    pub fn new(limits: &LimitSettings) -> Budget {
        Budget {
            run_share: limits.daily_budget_share,
            org_ceiling: limits.org_ceiling_share,
            state: Mutex::new(BudgetUse {
                org_limit: limits.hubspot_tier.map(|tier| tier.daily_limit()),
                ..BudgetUse::default()
            }),
        }
    }

    /// Counts a call about to be made, or says why it may not be.
    pub fn take(&self) -> Result<(), String> {
        let mut state = lock(&self.state);
        if let Some(limit) = state.org_limit {
            let run_allowance = (limit as f64 * self.run_share).floor() as u64;
            if state.run_calls >= run_allowance.max(1) {
                return Err(format!(
                    "this run made {} calls, its share ({:.0}%) of the daily allocation of {limit}",
                    state.run_calls,
                    self.run_share * 100.0
                ));
            }
            if let Some(used) = state.org_used {
                let ceiling = (limit as f64 * self.org_ceiling).floor() as u64;
                if used >= ceiling {
                    return Err(format!(
                        "the org has used {used} of its {limit} daily calls, past the ceiling of {:.0}%",
                        self.org_ceiling * 100.0
                    ));
                }
            }
        }
        state.run_calls += 1;
        if let Some(used) = state.org_used.as_mut() {
            *used += 1;
        }
        Ok(())
    }

    /// Takes the usage figures a response reported.
    pub fn observe(&self, kind: CrmKind, headers: &HeaderMap) {
        let reported = match kind {
            CrmKind::Salesforce => salesforce_usage(headers),
            CrmKind::Hubspot => hubspot_usage(headers),
        };
        if let Some((used, limit)) = reported {
            let mut state = lock(&self.state);
            state.org_used = Some(used);
            state.org_limit = Some(limit);
        }
    }

    /// The figures so far.
    pub fn usage(&self) -> BudgetUse {
        *lock(&self.state)
    }
}

/// `Sforce-Limit-Info: api-usage=N/M` (possibly followed by `; per-app-api-usage=…`).
fn salesforce_usage(headers: &HeaderMap) -> Option<(u64, u64)> {
    let value = headers.get("sforce-limit-info")?.to_str().ok()?;
    let usage = value
        .split([';', ','])
        .map(str::trim)
        .find_map(|part| part.strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
}

/// `X-HubSpot-RateLimit-Daily` and `-Daily-Remaining` (private apps only).
fn hubspot_usage(headers: &HeaderMap) -> Option<(u64, u64)> {
    let limit = header_u64(headers, "x-hubspot-ratelimit-daily")?;
    let remaining = header_u64(headers, "x-hubspot-ratelimit-daily-remaining")?;
    Some((limit.saturating_sub(remaining), limit))
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Locks a mutex; a holder that panicked leaves plain counters behind, still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

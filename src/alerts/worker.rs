//! The delivery worker: sends what the alert outbox holds, in order per channel, at most the
//! configured rate per channel, retrying with backoff until Slack takes it.
//!
//! A message is marked delivered in the store right after Slack accepts it; nothing is sent
//! twice unless the process dies in the instant between Slack's answer and that write (no
//! Slack API offers an idempotency key to close that gap). A channel whose head message must
//! wait holds back its later messages (order per deal), never other channels'. Permanent
//! errors mark the message failed with Slack's reason and let the channel move on.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;

use super::message::digest_message;
use super::slack::{PostError, SlackClient};
use crate::config::settings::SlackSettings;
use crate::record::Millis;
use crate::store::{PendingAlert, Store, StoreError, SyncLease};
use crate::sync::StopSignal;

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// First retry delay after a failure; doubled per attempt.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Time between two looks at the outbox.
    pub poll_interval: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What one pass over the outbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Messages Slack took (digest items count one each).
    pub delivered: u64,
    /// Messages to retry later.
    pub retried: u64,
    /// Messages given up on.
    pub failed: u64,
}

/// Sends outbox messages to one Slack workspace.
pub struct Deliverer {
    store: Store,
    client: SlackClient,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    options: DeliveryOptions,
}

/// The lease name delivery runs under; connection names cannot contain parentheses, so it
/// never collides with a connection's sync lease.
const DELIVERY_LEASE: &str = "(alert delivery)";

/// The rate key of messages without a channel (the webhook's own channel).
const WEBHOOK_KEY: &str = "(webhook)";

impl Deliverer {
    /// A deliverer for `slack`, reading and updating `store`'s outbox.
    pub fn new(store: Store, slack: &SlackSettings, options: DeliveryOptions) -> Deliverer {
        let rate = NonZeroU32::new(slack.messages_per_second_per_channel.max(1))
            .unwrap_or(NonZeroU32::MIN);
        // Burst of one: Slack's bound is per second, and a burst would break it at once.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        Deliverer {
            store,
            client: SlackClient::new(slack.delivery.clone()),
            limiter: Arc::new(RateLimiter::keyed(quota)),
            options,
        }
    }

    /// One pass: sends every due message whose channel is not held back.
    pub async fn deliver_due(&self) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        let pending = self.store.pending_alerts(1_000).await?;
        let mut held: HashSet<String> = HashSet::new();
        let mut digests: BTreeMap<String, Vec<&PendingAlert>> = BTreeMap::new();
        for alert in &pending {
            let key = alert.channel.clone().unwrap_or_else(|| WEBHOOK_KEY.into());
            if alert.kind == "digest_item" {
                if alert.next_attempt_at_ms <= now() {
                    digests.entry(key).or_default().push(alert);
                }
                continue;
            }
            if held.contains(&key) {
                continue;
            }
            if alert.next_attempt_at_ms > now() {
                held.insert(key);
                continue;
            }
            let thread_ts = match (alert.thread_of_id, alert.parent_status.as_deref()) {
                // The alert it answers is not out yet: wait for it, without holding the channel.
                (Some(_), Some("pending")) => continue,
                (Some(_), Some("delivered")) if self.client.threads() => alert.parent_ts.as_deref(),
                _ => None,
            };
            let sent = self
                .send(&key, alert.channel.as_deref(), &alert.payload.0, thread_ts)
                .await;
            if !self
                .settle(&[alert.id], alert.attempts, sent, &mut report)
                .await?
            {
                held.insert(key);
            }
        }
        for (key, items) in digests {
            if held.contains(&key) {
                continue;
            }
            let payloads: Vec<Value> = items.iter().map(|a| a.payload.0.clone()).collect();
            let body = digest_message(&payloads);
            let channel = items[0].channel.as_deref();
            let sent = self.send(&key, channel, &body, None).await;
            let ids: Vec<i64> = items.iter().map(|a| a.id).collect();
            let attempts = items.iter().map(|a| a.attempts).max().unwrap_or(0);
            self.settle(&ids, attempts, sent, &mut report).await?;
        }
        Ok(report)
    }

    async fn send(
        &self,
        key: &str,
        channel: Option<&str>,
        payload: &Value,
        thread_ts: Option<&str>,
    ) -> Result<Option<String>, PostError> {
        self.limiter.until_key_ready(&key.to_string()).await;
        self.client.post(channel, payload, thread_ts).await
    }

    /// Stores the outcome of one post; returns whether the channel may go on.
    async fn settle(
        &self,
        ids: &[i64],
        attempts: i64,
        sent: Result<Option<String>, PostError>,
        report: &mut DeliveryReport,
    ) -> Result<bool, StoreError> {
        let count = ids.len() as u64;
        match sent {
            Ok(ts) => {
                self.store
                    .mark_alerts_delivered(ids, ts.as_deref(), now())
                    .await?;
                report.delivered += count;
                Ok(true)
            }
            Err(PostError::Permanent(reason)) => {
                tracing::error!(alerts = ?ids, %reason, "Slack refused the alert for good; marked failed");
                self.store
                    .mark_alerts_attempt_failed(ids, &reason, None)
                    .await?;
                report.failed += count;
                Ok(true)
            }
            Err(err) => {
                let wait = match &err {
                    PostError::RateLimited(wait) => *wait,
                    _ => self.backoff(attempts),
                };
                tracing::warn!(alerts = ?ids, error = %err, retry_in_ms = wait.as_millis() as u64, "Slack delivery will be retried");
                let next = now() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                self.store
                    .mark_alerts_attempt_failed(ids, &err.to_string(), Some(next))
                    .await?;
                report.retried += count;
                Ok(false)
            }
        }
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let factor = 2u32.saturating_pow(attempts.clamp(0, 20) as u32);
        self.options
            .base_backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }

    /// Delivers until `stop` fires, looking at the outbox every poll interval. Replicas sharing
    /// a PostgreSQL store take turns through a lease: one delivers, so none sends twice.
    pub async fn run(self, mut stop: StopSignal) {
        let mut lease: Option<SyncLease> = None;
        while !stop.is_set() {
            if let Some(held) = &mut lease {
                if !held.is_held().await {
                    tracing::warn!("the alert delivery lease was lost with its database session; taking it again before delivering");
                    lease = None;
                }
            }
            if lease.is_none() {
                lease = match self.store.try_lease(DELIVERY_LEASE).await {
                    Ok(taken) => taken,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot take the alert delivery lease");
                        None
                    }
                };
            }
            if lease.is_some() {
                if let Err(err) = self.deliver_due().await {
                    tracing::error!(error = %err, "alert delivery pass failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.options.poll_interval) => {}
                () = stop.stopped() => {}
            }
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
    }
}

fn now() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

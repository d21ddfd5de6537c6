//! The delivery worker: sends what the alert outbox holds, in order per channel, at most the
//! configured rate per channel, retrying with backoff until Slack takes it.
//!
//! A message is marked as being sent before it goes out and delivered right after Slack
//! accepts it. When the answer never came (timeout, 5xx, or the process died before storing
//! it), the message stays in doubt: with a bot token the next attempt first looks for it in
//! the channel (see [`SlackClient::find_posted`]) and sends only if Slack does not hold it, so
//! each message arrives once across crashes and outages; an incoming webhook cannot be read
//! back and is sent again. A channel whose head message must wait holds back its later
//! messages (order per deal), never other channels'. Permanent errors mark the message
//! failed with Slack's reason and let the channel move on.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;

use super::message::digest_message;
use super::slack::{PostError, SlackClient};
use crate::config::settings::SlackSettings;
use crate::record::{wall_clock, Millis};
use crate::stop::StopSignal;
use crate::store::{PendingAlert, Store, StoreError, SyncLease};

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
    /// The least time between two messages to one channel.
    spacing: Duration,
    /// Channels whose last delivery by any process has been waited out; the limiter paces
    /// them from then on.
    paced: Mutex<HashSet<String>>,
    options: DeliveryOptions,
}

/// The lease name delivery runs under; connection names cannot contain parentheses, so it
/// never collides with a connection's sync lease.
const DELIVERY_LEASE: &str = "(alert delivery)";

/// The rate key of messages without a channel (the webhook's own channel).
const WEBHOOK_KEY: &str = "(webhook)";

impl Deliverer {
    /// A deliverer for `slack`, reading and updating `store`'s outbox; fails only when no
    /// HTTP client can be built (no TLS roots).
    pub fn new(
        store: Store,
        slack: &SlackSettings,
        options: DeliveryOptions,
    ) -> Result<Deliverer, reqwest::Error> {
        let rate = NonZeroU32::new(slack.messages_per_second_per_channel.max(1))
            .unwrap_or(NonZeroU32::MIN);
        // Burst of one: Slack's bound is per second, and a burst would break it at once.
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::MIN);
        Ok(Deliverer {
            store,
            client: SlackClient::new(slack.delivery.clone())?,
            limiter: Arc::new(RateLimiter::keyed(quota)),
            spacing: Duration::from_secs(1) / rate.get(),
            paced: Mutex::default(),
            options,
        })
    }

    /// One pass: sends every due message whose channel is not held back.
    pub async fn deliver_due(&self) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        let pending = self.store.pending_alerts(wall_clock(), 1_000).await?;
        let mut held: HashSet<String> = HashSet::new();
        let mut digests: BTreeMap<String, Vec<&PendingAlert>> = BTreeMap::new();
        for alert in &pending {
            let key = alert.channel.clone().unwrap_or_else(|| WEBHOOK_KEY.into());
            // The store hands over digest items only once they are due.
            if alert.kind == "digest_item" {
                digests.entry(key).or_default().push(alert);
                continue;
            }
            if held.contains(&key) {
                continue;
            }
            if alert.next_attempt_at_ms > wall_clock() {
                held.insert(key);
                continue;
            }
            let thread_ts = match (alert.thread_of_id, alert.parent_status.as_deref()) {
                // The alert it answers is not out yet: wait for it, without holding the channel.
                (Some(_), Some("pending")) => continue,
                (Some(_), Some("delivered")) if self.client.threads() => alert.parent_ts.as_deref(),
                _ => None,
            };
            let ids = [alert.id];
            let outgoing = Outgoing {
                key: &key,
                channel: alert.channel.as_deref(),
                payload: &alert.payload.0,
                thread_ts,
                ids: &ids,
            };
            let sent = self.deliver(&outgoing, alert.sent_at_ms).await?;
            if !self.settle(&ids, alert.attempts, sent, &mut report).await? {
                held.insert(key);
            }
        }
        for (key, items) in digests {
            if held.contains(&key) {
                continue;
            }
            let channel = items[0].channel.as_deref();
            let attempts = items.iter().map(|a| a.attempts).max().unwrap_or(0);
            // Items of an unanswered digest go out again only if Slack does not hold it; items
            // queued since then wait for the next pass, so the digest is looked up as it was.
            let in_doubt: Vec<&PendingAlert> = items
                .iter()
                .copied()
                .filter(|a| a.sent_at_ms.is_some())
                .collect();
            let batch = if in_doubt.is_empty() { items } else { in_doubt };
            let payloads: Vec<Value> = batch.iter().map(|a| a.payload.0.clone()).collect();
            let body = digest_message(&payloads);
            let ids: Vec<i64> = batch.iter().map(|a| a.id).collect();
            let sent_at = batch.iter().filter_map(|a| a.sent_at_ms).min();
            let outgoing = Outgoing {
                key: &key,
                channel,
                payload: &body,
                thread_ts: None,
                ids: &ids,
            };
            let sent = self.deliver(&outgoing, sent_at).await?;
            self.settle(&ids, attempts, sent, &mut report).await?;
        }
        Ok(report)
    }

    /// Sends a message, unless an earlier unanswered send (at `sent_at`) reached Slack after
    /// all, in which case that message's `ts` is the outcome.
    async fn deliver(
        &self,
        message: &Outgoing<'_>,
        sent_at: Option<Millis>,
    ) -> Result<Sent, StoreError> {
        let marker = marker_of(message.ids);
        if let Some(sent_at) = sent_at.filter(|_| self.client.threads()) {
            let found = self
                .client
                .find_posted(message.channel, message.thread_ts, &marker, sent_at)
                .await;
            match found {
                Ok(Some(ts)) => {
                    tracing::info!(alerts = ?message.ids, "Slack holds the alert whose send went unanswered; not sending it again");
                    return Ok(Sent::answered(Ok(Some(ts))));
                }
                Ok(None) => {}
                Err(PostError::Permanent(reason)) => {
                    tracing::warn!(alerts = ?message.ids, %reason, "cannot look in Slack for an alert whose send went unanswered; sending it again, which may show it twice");
                }
                // The doubt stays until the lookup can be made.
                Err(err) => return Ok(Sent::unanswered(err)),
            }
        }
        self.wait_out_last_delivery(message).await?;
        self.store
            .mark_alerts_sending(message.ids, wall_clock())
            .await?;
        self.limiter.until_key_ready(&message.key.to_string()).await;
        let posted = self
            .client
            .post(message.channel, message.payload, message.thread_ts, &marker)
            .await;
        Ok(match posted {
            Err(err @ PostError::Unanswered(_)) => Sent::unanswered(err),
            posted => Sent::answered(posted),
        })
    }

    /// Before this deliverer's first message to a channel, waits until the pace allows one
    /// after the last message any process delivered there: the limiter starts empty after a
    /// restart or a takeover by another replica.
    async fn wait_out_last_delivery(&self, message: &Outgoing<'_>) -> Result<(), StoreError> {
        if self.paced_channels().contains(message.key) {
            return Ok(());
        }
        if let Some(last) = self.store.last_delivery_at(message.channel).await? {
            let next = last + self.spacing.as_millis() as Millis;
            let wait = next - wall_clock();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        self.paced_channels().insert(message.key.to_string());
        Ok(())
    }

    fn paced_channels(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set holds no invariant a panic elsewhere could break.
        self.paced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the outcome of one post; returns whether the channel may go on.
    async fn settle(
        &self,
        ids: &[i64],
        attempts: i64,
        sent: Sent,
        report: &mut DeliveryReport,
    ) -> Result<bool, StoreError> {
        let count = ids.len() as u64;
        let answered = sent.answered;
        match sent.outcome {
            Ok(ts) => {
                self.store
                    .mark_alerts_delivered(ids, ts.as_deref(), wall_clock())
                    .await?;
                report.delivered += count;
                Ok(true)
            }
            Err(PostError::Permanent(reason)) => {
                tracing::error!(alerts = ?ids, %reason, "Slack refused the alert for good; marked failed");
                self.store
                    .mark_alerts_attempt_failed(ids, &reason, None, answered)
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
                let next = wall_clock() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                self.store
                    .mark_alerts_attempt_failed(ids, &err.to_string(), Some(next), answered)
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
                    Ok(Some(taken)) => {
                        // Another replica may have delivered meanwhile: pace from its sends.
                        self.paced_channels().clear();
                        Some(taken)
                    }
                    Ok(None) => None,
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

/// One message on its way: where it goes, what it says, which outbox rows it settles.
struct Outgoing<'m> {
    /// Rate-limit key (the channel, or the webhook's).
    key: &'m str,
    channel: Option<&'m str>,
    payload: &'m Value,
    thread_ts: Option<&'m str>,
    ids: &'m [i64],
}

/// The outcome of an attempt, and whether Slack's answer settles what it holds.
struct Sent {
    outcome: Result<Option<String>, PostError>,
    answered: bool,
}

impl Sent {
    fn answered(outcome: Result<Option<String>, PostError>) -> Sent {
        Sent {
            outcome,
            answered: true,
        }
    }

    fn unanswered(err: PostError) -> Sent {
        Sent {
            outcome: Err(err),
            answered: false,
        }
    }
}

/// The tag that lets a message be found in Slack again: its outbox ids.
fn marker_of(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    ids.join(",")
}

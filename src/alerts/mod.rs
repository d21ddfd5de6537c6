//! Alerts: Slack messages decided by the rules, stored in the alert outbox, and delivered by a
//! worker that retries until Slack takes them.

pub mod message;
mod slack;
mod worker;

pub use slack::{PostError, SlackClient};
pub use worker::{Deliverer, DeliveryOptions, DeliveryReport};

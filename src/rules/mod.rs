//! Stage gates: judge each new deal move against the rules of its connection, store one
//! violation per (rule, move), resolve violations later, and decide the Slack alerts.
//!
//! Evaluation reads only the store. Each move is judged against the record's version valid
//! at the move, not its current state. A move older than the oldest stored version of its
//! record (history read by the first backfill) cannot be judged and is counted as unjudged.
//! A rule's first evaluation of a connection records what it finds without alerting, so that
//! turning a rule on does not flood Slack with the past.

mod evaluate;
pub mod gate;
pub mod revert;
mod review;

use std::collections::HashMap;

use crate::config::settings::{
    ConnectionSettings, CrmKind, Endpoints, RuleSettings, SlackDelivery, SlackSettings,
};
use crate::record::ActorKind;
use crate::store::{CrmOwner, StoreError};
use url::Url;

pub use evaluate::{evaluate_connection, waive, EvaluationReport, WaiveError};
pub use gate::{CompiledRule, Finding, MissingField, ViolationKind};
pub use review::{backtest, check, BacktestReport, Problem, RuleCheck, Severity};

/// Why rules could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Owners of a connection by CRM id, for exemptions, actor kinds and alert texts.
#[derive(Debug, Default)]
pub(crate) struct OwnerIndex(HashMap<String, CrmOwner>);

impl OwnerIndex {
    pub(crate) fn new(owners: Vec<CrmOwner>) -> OwnerIndex {
        OwnerIndex(owners.into_iter().map(|o| (o.crm_id.clone(), o)).collect())
    }

    /// The teams an owner belongs to, as the CRM's owner metadata lists them; lazy, because
    /// only rules that exempt teams look at them, and that once per move.
    pub(crate) fn teams<'s>(&'s self, owner: Option<&str>) -> impl Iterator<Item = &'s str> {
        owner
            .and_then(|id| self.0.get(id))
            .and_then(|o| o.teams.as_array())
            .into_iter()
            .flatten()
            .filter_map(|team| team.as_str().or_else(|| team["name"].as_str()))
    }

    /// An owner's display name, else the id.
    pub(crate) fn display<'a>(&'a self, id: Option<&'a str>) -> Option<&'a str> {
        let id = id?;
        Some(self.0.get(id).and_then(|o| o.name.as_deref()).unwrap_or(id))
    }

    /// Who made a move: the CRM history's own classification when it has one (HubSpot's
    /// `sourceType`), else the kind of the user that made it (Salesforce `CreatedById`).
    pub(crate) fn actor(&self, stored: &str, changed_by: Option<&str>) -> ActorKind {
        match ActorKind::parse(stored) {
            Some(kind) if kind != ActorKind::Unknown => kind,
            _ => match changed_by
                .and_then(|id| self.0.get(id))
                .map(|o| o.kind.as_str())
            {
                Some("person") => ActorKind::Person,
                Some("integration") => ActorKind::Integration,
                _ => ActorKind::Unknown,
            },
        }
    }
}

/// Where a rule's alerts go: `None` when alerts are off (no Slack section); else the rule's
/// channel, its connection's, or the default one (`None` inside for a webhook's own).
pub(crate) fn alert_channel<'a>(
    rule: &'a RuleSettings,
    connection: Option<&'a ConnectionSettings>,
    slack: Option<&'a SlackSettings>,
) -> Option<Option<&'a str>> {
    let slack = slack?;
    Some(match slack.delivery {
        SlackDelivery::Webhook { .. } => None,
        SlackDelivery::BotToken { .. } => rule
            .channel
            .as_deref()
            .or(connection.and_then(|c| c.slack_channel.as_deref()))
            .or(slack.default_channel.as_deref()),
    })
}

/// A link to a deal in the CRM's UI, from where the sync found the connection's records open
/// (`base`; see [`crate::store::Store::record_url_base`]). Before a first sync, a Salesforce connection with
/// a configured `instance_url` links there; otherwise there is no link.
pub(crate) fn record_link(
    connection: &ConnectionSettings,
    base: Option<&str>,
    crm_id: &str,
) -> Option<String> {
    let configured = match &connection.endpoints {
        Endpoints::Salesforce { instance_url, .. } => instance_url.as_ref().map(Url::as_str),
        Endpoints::Hubspot { .. } => None,
    };
    let base = base.or(configured)?.trim_end_matches('/');
    Some(match connection.kind {
        CrmKind::Salesforce => format!("{base}/lightning/r/Opportunity/{crm_id}/view"),
        // 0-3 is HubSpot's object type id of deals.
        CrmKind::Hubspot => format!("{base}/record/0-3/{crm_id}"),
    })
}

/// The CRM object of deals.
pub(crate) fn deal_object(crm: CrmKind) -> &'static str {
    match crm {
        CrmKind::Salesforce => "Opportunity",
        CrmKind::Hubspot => "deals",
    }
}

/// The CRM's name as alerts show it.
pub(crate) fn crm_label(kind: CrmKind) -> &'static str {
    match kind {
        CrmKind::Salesforce => "Salesforce",
        CrmKind::Hubspot => "HubSpot",
    }
}

/// One line about a rule's evaluation, as `sync --once` and the demo print it.
pub fn describe_evaluation(report: &EvaluationReport) -> String {
    if !report.not_evaluated.is_empty() {
        return format!(
            "rule {}: not evaluated: {}",
            report.rule,
            report.not_evaluated.join("; ")
        );
    }
    format!(
        "rule {}: {} moves judged ({} before the oldest stored state, {} exempt, {} pipewarden reverts), \
         {} new violations, {} alerts queued, {} resolved late, {} superseded, {} reverts planned ({} deferred to later runs)",
        report.rule,
        report.judged,
        report.unjudged,
        report.exempt,
        report.own_reverts,
        report.violations,
        report.alerts,
        report.resolved_late,
        report.superseded,
        report.reverts,
        report.reverts_deferred
    )
}

/// Evaluates a connection's rules after its sync, then delivers the reverts of revert-mode
/// rules, logging rather than failing: a rule problem must not stop the sync loop.
pub async fn evaluate_after_sync(
    store: &crate::store::Store,
    settings: &crate::config::Settings,
    connection: &ConnectionSettings,
) -> Vec<EvaluationReport> {
    let now = crate::record::wall_clock();
    let reports = match evaluate_connection(store, settings, connection, now).await {
        Ok(reports) => reports,
        Err(err) => {
            tracing::error!(connection = %connection.name, error = %err, "stage-gate evaluation failed");
            Vec::new()
        }
    };
    match revert::deliver(
        store,
        settings,
        connection,
        crate::crm::RetryPolicy::default(),
    )
    .await
    {
        Ok(delivered) if delivered.applied + delivered.failed + delivered.retry_later > 0 => {
            tracing::info!(connection = %connection.name, applied = delivered.applied,
                failed = delivered.failed, retry_later = delivered.retry_later, "write-backs delivered");
        }
        Ok(_) => {}
        Err(err) => {
            tracing::error!(connection = %connection.name, error = %err, "write-back delivery failed");
        }
    }
    reports
}

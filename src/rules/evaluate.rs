//! Evaluation after a sync: new moves become violations (and alerts), open violations
//! resolve late, are superseded by a move back, or are waived by a person.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{json, Value};

use super::gate::{CompiledRule, Finding, MissingField, ViolationKind};
use super::revert;
use super::review::Severity;
use super::{alert_channel, crm_label, deal_object, record_link, OwnerIndex, RulesError};
use crate::alerts::message::{resolution_message, violation_message, ViolationAlert};
use crate::config::settings::{ConnectionSettings, RuleMode, RuleSettings, SlackDelivery};
use crate::config::Settings;
use crate::record::{ActorKind, Millis, ObjectKind};
use crate::store::{
    Ending, LaterMove, LaterVersion, MoveAtVersion, NewAlert, NewViolation, OpenViolation,
    StatisticsOf, StatisticsSchedule, Store, StoreError, StoreTx,
};

/// Moves read and judged per transaction.
const BATCH: i64 = 5_000;
/// New violations stored by one evaluation before the violation tables' statistics are first
/// refreshed (see [`Store::refresh_statistics`] and [`StatisticsSchedule`]).
const STATISTICS_AFTER: u64 = 1_000;

/// What one rule's evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EvaluationReport {
    /// Rule name.
    pub rule: String,
    /// Moves judged against the record's version at the move.
    pub judged: u64,
    /// Moves older than any stored version of their record.
    pub unjudged: u64,
    /// Moves of exempt owners or teams.
    pub exempt: u64,
    /// Moves that were pipewarden's own reverts, not judged (see [`Store::revert_moves`]).
    pub own_reverts: u64,
    /// New violations.
    pub violations: u64,
    /// Alerts put in the outbox.
    pub alerts: u64,
    /// Violations resolved late.
    pub resolved_late: u64,
    /// Violations superseded by a move back.
    pub superseded: u64,
    /// Violations whose revert was planned (revert mode), earlier ones' included.
    pub reverts: u64,
    /// Violations whose revert waits for a later evaluation (past `max_reverts_per_run`).
    pub reverts_deferred: u64,
    /// Why the rule was not evaluated: the stages and fields it names that the CRM's stored
    /// metadata does not have, each naming its config key. Empty when it was evaluated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_evaluated: Vec<String>,
}

/// The errors `rules check` finds in a rule against the stored metadata; warnings (metadata
/// not synced yet) do not stop an evaluation.
async fn metadata_errors(
    store: &Store,
    index: usize,
    rule: &RuleSettings,
    connection: &ConnectionSettings,
) -> Result<Vec<String>, RulesError> {
    let problems = super::review::check_rule(
        store,
        &format!("rules[{index}]"),
        rule,
        deal_object(connection.kind),
    )
    .await?;
    Ok(problems
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.message)
        .collect())
}

/// Evaluates every rule of `connection` over the moves stored since its last evaluation.
pub async fn evaluate_connection(
    store: &Store,
    settings: &Settings,
    connection: &ConnectionSettings,
    now: Millis,
) -> Result<Vec<EvaluationReport>, RulesError> {
    // With their index, since problems are named by config key (`rules[2].stages[0]…`).
    let rules: Vec<(usize, &RuleSettings)> = settings
        .rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.connection == connection.name)
        .collect();
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let Some(connection_id) = store.connection_id(&connection.name).await? else {
        return Ok(Vec::new());
    };
    let definitions = store
        .stage_definitions(connection_id, ObjectKind::Deal)
        .await?;
    let owners = OwnerIndex::new(store.owners(connection_id).await?);
    let record_base = store.record_url_base(connection_id).await?;
    let own_reverts = store.revert_moves(connection_id).await?;
    let mut reports = Vec::new();
    for (index, rule) in rules {
        let errors = metadata_errors(store, index, rule, connection).await?;
        if !errors.is_empty() {
            // A misspelt field is never filled, so every move into its stage would be a
            // violation and an alert: the rule waits until it is fixed.
            tracing::error!(rule = %rule.name, connection = %connection.name, problems = %errors.join("; "),
                "the rule names what the CRM's metadata does not have; it is not evaluated until fixed (see `pipewarden rules check`)");
            reports.push(EvaluationReport {
                rule: rule.name.clone(),
                not_evaluated: errors,
                ..EvaluationReport::default()
            });
            continue;
        }
        let compiled = CompiledRule::new(rule, &definitions);
        if !compiled.has_stages() {
            tracing::warn!(rule = %rule.name, connection = %connection.name, pipeline = %rule.pipeline,
                "no stage metadata stored for the rule's pipeline yet; the rule waits for a sync that brings it");
            continue;
        }
        let mut run = RuleRun {
            store,
            settings,
            connection,
            connection_id,
            rule: &compiled,
            owners: &owners,
            own_reverts: &own_reverts,
            record_base: record_base.as_deref(),
            now,
            report: EvaluationReport {
                rule: rule.name.clone(),
                ..EvaluationReport::default()
            },
        };
        run.evaluate().await?;
        tracing::debug!(rule = %rule.name, judged = run.report.judged, unjudged = run.report.unjudged,
            violations = run.report.violations, alerts = run.report.alerts,
            resolved_late = run.report.resolved_late, superseded = run.report.superseded, "rule evaluated");
        reports.push(run.report);
    }
    Ok(reports)
}

/// A move found in breach, with what its violation row stores.
struct Judged<'m> {
    m: &'m MoveAtVersion,
    finding: Finding,
    missing: Value,
    skipped: Value,
    actor: ActorKind,
}

struct RuleRun<'a> {
    store: &'a Store,
    settings: &'a Settings,
    connection: &'a ConnectionSettings,
    connection_id: i64,
    rule: &'a CompiledRule,
    owners: &'a OwnerIndex,
    /// Moves made by pipewarden's reverts, which are not judged.
    own_reverts: &'a HashSet<i64>,
    /// Where the connection's records open in the CRM's UI.
    record_base: Option<&'a str>,
    now: Millis,
    report: EvaluationReport,
}

impl<'a> RuleRun<'a> {
    async fn evaluate(&mut self) -> Result<(), RulesError> {
        let name = self.rule.settings.name.as_str();
        let progress = self.store.rule_progress(name, self.connection_id).await?;
        let baseline = progress.is_none();
        let (after_transition, after_version) = progress.unwrap_or((0, 0));
        // Read before the moves: versions stored meanwhile are looked at again next time.
        let version_mark = self.store.last_version_id(self.connection_id).await?;
        let mut last = after_transition;
        let statistics = StatisticsSchedule::starting_at(STATISTICS_AFTER);
        let mut pages = self.store.moves_at_version_pages(
            self.connection_id,
            after_transition,
            None,
            BATCH,
            self.rule.fields(),
        );
        loop {
            let Some(page) = pages.next().await else {
                break;
            };
            let moves = page?;
            let Some(newest) = moves.last().map(|m| m.transition_id) else {
                break;
            };
            let mut tx = self.store.begin().await?;
            self.judge_and_store(&mut tx, &moves, baseline).await?;
            tx.set_rule_progress(name, self.connection_id, newest, after_version, self.now)
                .await?;
            tx.commit().await?;
            last = newest;
            if statistics.due(self.report.violations) {
                // Only speed is at stake: a failed refresh must not stop the evaluation.
                if let Err(err) = self
                    .store
                    .refresh_statistics(StatisticsOf::Violations)
                    .await
                {
                    tracing::warn!(error = %err, "could not refresh the violation tables' statistics");
                }
            }
        }
        self.resolve(after_transition, after_version).await?;
        if self.rule.settings.mode == RuleMode::Revert {
            let planned = revert::plan_due(
                self.store,
                self.connection,
                self.connection_id,
                &self.rule.settings,
                self.now,
            )
            .await?;
            self.report.reverts = planned.planned;
            self.report.reverts_deferred = planned.still_due;
        }
        let mut tx = self.store.begin().await?;
        tx.set_rule_progress(name, self.connection_id, last, version_mark, self.now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Judges a batch of moves and stores their violations (and alerts) in a few statements.
    async fn judge_and_store(
        &mut self,
        tx: &mut StoreTx,
        moves: &[MoveAtVersion],
        baseline: bool,
    ) -> Result<(), StoreError> {
        let (rule, owners, own_reverts) = (self.rule, self.owners, self.own_reverts);
        let judged: Vec<Judged> = moves
            .iter()
            .filter_map(|m| {
                let finding = judge_move(rule, owners, own_reverts, m, &mut self.report)?;
                Some(Judged {
                    missing: json!(finding.missing),
                    skipped: json!(finding.skipped),
                    actor: owners.actor(&m.actor_kind, m.changed_by.as_deref()),
                    finding,
                    m,
                })
            })
            .collect();
        if judged.is_empty() {
            return Ok(());
        }
        let channel = self.alert_route();
        let alerted = channel.is_some() && !baseline;
        let rows: Vec<NewViolation> = judged
            .iter()
            .map(|j| NewViolation {
                rule_name: &rule.settings.name,
                connection_id: self.connection_id,
                record_id: j.m.record_id,
                transition_id: j.m.transition_id,
                from_stage: j.m.from_stage.as_deref(),
                to_stage: &j.m.to_stage,
                missing_fields: &j.missing,
                skipped_stages: &j.skipped,
                changed_at: j.m.changed_at_ms,
                changed_by: j.m.changed_by.as_deref(),
                actor_kind: j.actor.as_str(),
                owner_id: j.m.owner_id.as_deref(),
                kind: j.finding.kind.as_str(),
                alerted,
                detected_at: self.now,
            })
            .collect();
        let ids = tx.insert_violations(&rows).await?;
        self.report.violations += ids.len() as u64;
        if rule.settings.mode == RuleMode::Revert && !baseline {
            // A backward move is not undone by pushing the deal forward again, and a deal
            // created in a gated stage has no stage to go back to.
            let due: Vec<i64> = judged
                .iter()
                .filter(|j| j.finding.kind != ViolationKind::Backward && j.m.from_stage.is_some())
                .filter_map(|j| ids.get(&j.m.transition_id).copied())
                .collect();
            revert::mark_due(tx, &due, self.now).await?;
        }
        let (true, Some(channel)) = (alerted, channel) else {
            return Ok(());
        };
        // In move order, so that each deal's alerts go out in the order it moved.
        for j in &judged {
            if let Some(&violation_id) = ids.get(&j.m.transition_id) {
                self.enqueue_violation_alert(tx, j, violation_id, channel)
                    .await?;
            }
        }
        Ok(())
    }

    async fn enqueue_violation_alert(
        &mut self,
        tx: &mut StoreTx,
        j: &Judged<'_>,
        violation_id: i64,
        channel: Option<&str>,
    ) -> Result<(), StoreError> {
        let payload = self.violation_payload(j.m, &j.finding, j.actor.as_str());
        let digest_at = self
            .settings
            .slack
            .as_ref()
            .and_then(|slack| slack.digest_for(channel));
        let (kind, not_before) = match digest_at {
            Some(at) => ("digest_item", next_digest(self.now, at)),
            None => ("violation", self.now),
        };
        let key = format!("violation:{violation_id}");
        tx.enqueue_alert(&NewAlert {
            dedupe_key: &key,
            kind,
            channel,
            payload: &payload,
            violation_id: Some(violation_id),
            thread_of_id: None,
            not_before,
            created_at: self.now,
        })
        .await?;
        self.report.alerts += 1;
        Ok(())
    }

    /// `Some(channel)` when this rule alerts.
    fn alert_route(&self) -> Option<Option<&'a str>> {
        if self.rule.settings.mode == RuleMode::Record {
            return None;
        }
        let (rule, settings): (&'a CompiledRule, &'a Settings) = (self.rule, self.settings);
        alert_channel(
            &rule.settings,
            Some(self.connection),
            settings.slack.as_ref(),
        )
    }

    fn violation_payload(&self, m: &MoveAtVersion, finding: &Finding, actor: &str) -> Value {
        let moved_by = match m.changed_by.as_deref() {
            Some(id) => format!("{} ({actor})", self.owners.display(Some(id)).unwrap_or(id)),
            None => actor.to_string(),
        };
        violation_message(&ViolationAlert {
            rule: &self.rule.settings.name,
            connection: &self.connection.name,
            deal_name: m.name.as_deref(),
            crm_id: &m.crm_id,
            owner: self.owners.display(m.owner_id.as_deref()),
            amount_cents: m.amount_cents,
            from_stage: m.from_stage.as_deref(),
            to_stage: &m.to_stage,
            moved_by,
            missing: finding
                .missing
                .iter()
                .map(|f| (f.stage.as_str(), f.field.as_str()))
                .collect(),
            skipped: finding.skipped.iter().map(String::as_str).collect(),
            link: record_link(self.connection, self.record_base, &m.crm_id),
            crm_label: crm_label(self.connection.kind),
        })
    }

    /// Open violations on records that changed since the last evaluation: resolved late when
    /// a later version has every missing field, superseded when the deal moved back first.
    /// All of them are read in three queries and settled in one transaction.
    async fn resolve(
        &mut self,
        after_transition: i64,
        after_version: i64,
    ) -> Result<(), RulesError> {
        let open = self
            .store
            .open_violations_touched(
                &self.rule.settings.name,
                self.connection_id,
                after_transition,
                after_version,
            )
            .await?;
        let mut versions = open.versions.iter().peekable();
        let mut moves = open.moves.iter().peekable();
        let mut endings = Vec::new();
        for violation in &open.violations {
            let mut later_versions = Vec::new();
            while let Some(v) = versions.next_if(|v| v.violation_id == violation.id) {
                later_versions.push(v);
            }
            let mut later_moves = Vec::new();
            while let Some(m) = moves.next_if(|m| m.violation_id == violation.id) {
                later_moves.push(m);
            }
            if let Some(ending) = self.outcome(violation, &later_versions, &later_moves) {
                endings.push((violation, ending));
            }
        }
        if endings.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let rows: Vec<Ending> = endings
            .iter()
            .map(|(violation, (status, at))| Ending {
                violation_id: violation.id,
                status,
                at: *at,
                note: (*status == "resolved_late")
                    .then(|| format!("filled {} ms after the move", at - violation.changed_at_ms)),
            })
            .collect();
        let closed = tx.close_violations(&rows, self.now, "pipewarden").await?;
        for (violation, (status, at)) in endings {
            if !closed.contains(&violation.id) {
                continue;
            }
            let delay = at - violation.changed_at_ms;
            match status {
                "resolved_late" => self.report.resolved_late += 1,
                _ => self.report.superseded += 1,
            }
            reply_in_thread(
                &mut tx,
                self.settings,
                &self.rule.settings,
                violation.id,
                status,
                Some(delay),
                None,
                self.now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What ended an open violation first, and when, if anything did.
    fn outcome(
        &self,
        violation: &OpenViolation,
        later_versions: &[&LaterVersion],
        later_moves: &[&LaterMove],
    ) -> Option<(&'static str, Millis)> {
        let kind = ViolationKind::parse(&violation.kind).unwrap_or(ViolationKind::Forward);
        let target = self.rule.position_of(&violation.to_stage);
        let moved_back = later_moves
            .iter()
            .find(|m| match kind {
                ViolationKind::Forward | ViolationKind::Skip => {
                    match (self.rule.position_of(&m.to_stage), target) {
                        (Some(now), Some(then)) => now < then,
                        _ => false,
                    }
                }
                // A closed-lost deal reopened, or a deal moved on from where it went back to.
                ViolationKind::ClosedLost | ViolationKind::Backward => true,
            })
            .map(|m| m.changed_at_ms);
        let missing: Vec<MissingField> =
            serde_json::from_value(violation.missing_fields.0.clone()).unwrap_or_default();
        // A skip with nothing missing cannot be mended by filling fields: it stays open until
        // waived or the deal moves back.
        let filled = if missing.is_empty() {
            None
        } else {
            later_versions
                .iter()
                .filter(|v| !v.deleted)
                .find(|v| {
                    missing
                        .iter()
                        .all(|m| super::gate::is_filled(v.fields.0.get(&m.field)))
                })
                .map(|v| v.valid_from_ms)
        };
        match (filled, moved_back) {
            (Some(fill), Some(back)) if back < fill => Some(("superseded", back)),
            (Some(fill), _) => Some(("resolved_late", fill)),
            (None, Some(back)) => Some(("superseded", back)),
            (None, None) => None,
        }
    }
}

/// Judges one move: `None` when it is out of the rule's pipeline, one of pipewarden's own
/// reverts, cannot be judged, is exempt or breaches nothing. Counts what it saw in `report`.
pub(crate) fn judge_move(
    rule: &CompiledRule,
    owners: &OwnerIndex,
    own_reverts: &HashSet<i64>,
    m: &MoveAtVersion,
    report: &mut EvaluationReport,
) -> Option<Finding> {
    if m.pipeline.as_deref() != Some(rule.settings.pipeline.as_str()) {
        return None;
    }
    if own_reverts.contains(&m.transition_id) {
        report.own_reverts += 1;
        return None;
    }
    let covered = m.version_id.is_some() && m.valid_to_ms.is_none_or(|to| to > m.changed_at_ms);
    let Some(fields) = m.fields.as_ref().filter(|_| covered) else {
        report.unjudged += 1;
        return None;
    };
    report.judged += 1;
    if rule.exempts(m.owner_id.as_deref(), owners.teams(m.owner_id.as_deref())) {
        report.exempt += 1;
        return None;
    }
    rule.judge(m.from_stage.as_deref(), &m.to_stage, &fields.0)
}

/// Puts the resolution of an alerted violation in the outbox as a reply in the alert's
/// thread (bot tokens only: webhooks cannot reply in threads).
#[allow(clippy::too_many_arguments)]
async fn reply_in_thread(
    tx: &mut StoreTx,
    settings: &Settings,
    rule: &RuleSettings,
    violation_id: i64,
    status: &str,
    delay_ms: Option<Millis>,
    note: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    let Some(slack) = settings.slack.as_ref() else {
        return Ok(());
    };
    if !matches!(slack.delivery, SlackDelivery::BotToken { .. }) || rule.mode == RuleMode::Record {
        return Ok(());
    }
    let Some(parent) = tx.alert_of_violation(violation_id).await? else {
        return Ok(());
    };
    let connection = settings
        .connections
        .iter()
        .find(|c| c.name == rule.connection);
    let channel = alert_channel(rule, connection, Some(slack)).flatten();
    let payload = resolution_message(status, delay_ms, note);
    let key = format!("resolution:{violation_id}");
    tx.enqueue_alert(&NewAlert {
        dedupe_key: &key,
        kind: "resolution",
        channel,
        payload: &payload,
        violation_id: Some(violation_id),
        thread_of_id: Some(parent),
        not_before: now,
        created_at: now,
    })
    .await?;
    Ok(())
}

/// Why a waiver was refused.
#[derive(Debug, thiserror::Error)]
pub enum WaiveError {
    /// No violation has this id.
    #[error("no violation with id {0}")]
    NotFound(i64),
    /// It is no longer open.
    #[error("violation {id} is {status}, not open; only open violations can be waived")]
    NotOpen {
        /// The violation.
        id: i64,
        /// Its status.
        status: String,
    },
    /// A waiver needs a reason.
    #[error("a waiver needs a reason (--reason or \"reason\")")]
    NoReason,
    /// A waiver must say who gave it.
    #[error("a waiver must name who gives it (--by or \"by\")")]
    NoWaiver,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Waives an open violation on a person's word, with the reason recorded.
pub async fn waive(
    store: &Store,
    settings: &Settings,
    violation_id: i64,
    by: &str,
    reason: &str,
    now: Millis,
) -> Result<(), WaiveError> {
    if reason.trim().is_empty() {
        return Err(WaiveError::NoReason);
    }
    if by.trim().is_empty() {
        return Err(WaiveError::NoWaiver);
    }
    let violation = store
        .violation(violation_id)
        .await?
        .ok_or(WaiveError::NotFound(violation_id))?;
    let mut tx = store.begin().await?;
    if !tx
        .close_violation(violation_id, "waived", now, now, Some(by), Some(reason))
        .await?
    {
        return Err(WaiveError::NotOpen {
            id: violation_id,
            status: violation.status,
        });
    }
    if let Some(rule) = settings
        .rules
        .iter()
        .find(|r| r.name == violation.rule_name)
    {
        reply_in_thread(
            &mut tx,
            settings,
            rule,
            violation_id,
            "waived",
            None,
            Some(reason),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The next instant at the digest's time of day (UTC) after `now`.
pub(crate) fn next_digest(now: Millis, at: chrono::NaiveTime) -> Millis {
    let now_utc = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    let today = now_utc.date_naive().and_time(at).and_utc();
    let next = if today.timestamp_millis() > now {
        today
    } else {
        today + chrono::Duration::days(1)
    };
    next.timestamp_millis()
}

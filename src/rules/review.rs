//! Rules before they act: `rules check` validates them against the stored CRM metadata, and
//! `rules backtest` replays them over the history already stored, writing nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::evaluate::{judge_move, EvaluationReport};
use super::gate::CompiledRule;
use super::{OwnerIndex, RulesError};
use crate::config::settings::RuleSettings;
use crate::config::Settings;
use crate::record::{Millis, ObjectKind};
use crate::store::Store;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The rule names something the CRM does not have.
    Error,
    /// The rule cannot be checked yet (nothing synced).
    Warning,
}

/// One problem of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, naming the config key.
    pub message: String,
}

/// The check of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCheck {
    /// Rule name.
    pub rule: String,
    /// What is wrong with it; empty when it is fine.
    pub problems: Vec<Problem>,
}

/// Checks every rule's stages and fields against what the store knows of its CRM: stage
/// metadata, and the fields the stored deals carry. Before a sync brought them, it warns.
pub async fn check(store: &Store, settings: &Settings) -> Result<Vec<RuleCheck>, RulesError> {
    let mut checks = Vec::new();
    for (index, rule) in settings.rules.iter().enumerate() {
        let key = format!("rules[{index}]");
        checks.push(RuleCheck {
            rule: rule.name.clone(),
            problems: check_rule(store, &key, rule).await?,
        });
    }
    Ok(checks)
}

async fn check_rule(
    store: &Store,
    key: &str,
    rule: &RuleSettings,
) -> Result<Vec<Problem>, RulesError> {
    let warn = |message: String| Problem {
        severity: Severity::Warning,
        message,
    };
    let error = |message: String| Problem {
        severity: Severity::Error,
        message,
    };
    let Some(connection_id) = store.connection_id(&rule.connection).await? else {
        return Ok(vec![warn(format!(
            "{key} ({}): connection `{}` has not been synced yet; its stages and fields cannot be checked",
            rule.name, rule.connection
        ))]);
    };
    let mut problems = Vec::new();
    let definitions = store
        .stage_definitions(connection_id, ObjectKind::Deal)
        .await?;
    let compiled = CompiledRule::new(rule, &definitions);
    if definitions.is_empty() {
        problems.push(warn(format!(
            "{key} ({}): no stage metadata of `{}` is stored yet; stages cannot be checked",
            rule.name, rule.connection
        )));
    } else if !compiled.has_stages() {
        let pipelines: BTreeSet<&str> = definitions.iter().map(|d| d.pipeline.as_str()).collect();
        problems.push(error(format!(
            "{key}.pipeline: `{}` is not a deal pipeline of connection `{}` (it has: {})",
            rule.pipeline,
            rule.connection,
            pipelines.into_iter().collect::<Vec<_>>().join(", ")
        )));
    } else {
        for (index, gate) in rule.stages.iter().enumerate() {
            if !compiled.knows_stage(&gate.stage) {
                let known: Vec<&str> = definitions
                    .iter()
                    .filter(|d| d.pipeline == rule.pipeline)
                    .map(|d| d.stage.as_str())
                    .collect();
                problems.push(error(format!(
                    "{key}.stages[{index}].stage: `{}` is not a stage of pipeline `{}` in connection `{}` (its stages: {})",
                    gate.stage,
                    rule.pipeline,
                    rule.connection,
                    known.join(", ")
                )));
            }
        }
    }
    let known_fields = store.deal_field_names(connection_id).await?;
    if known_fields.is_empty() {
        problems.push(warn(format!(
            "{key} ({}): no deals of `{}` are stored yet; fields cannot be checked",
            rule.name, rule.connection
        )));
        return Ok(problems);
    }
    let named = rule
        .stages
        .iter()
        .enumerate()
        .flat_map(|(index, gate)| {
            gate.required
                .iter()
                .map(move |field| (format!("{key}.stages[{index}].required"), field))
        })
        .chain(
            rule.closed_lost_requires
                .iter()
                .map(|field| (format!("{key}.closed_lost_requires"), field)),
        )
        .chain(
            rule.backward_requires
                .iter()
                .map(|field| (format!("{key}.backward_requires"), field)),
        );
    for (place, field) in named {
        if !known_fields.contains(field.as_str()) {
            problems.push(error(format!(
                "{place}: `{field}` is not a deal field of connection `{}` (no stored deal has it; \
                 for a custom field, list it in custom_fields and check the integration user can read it)",
                rule.connection
            )));
        }
    }
    Ok(problems)
}

/// What one rule would have done over stored history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BacktestReport {
    /// Counts as an evaluation would make them.
    pub counts: EvaluationReport,
    /// Violations that would have fired.
    pub would_fire: u64,
    /// By kind of breach.
    pub by_kind: BTreeMap<String, u64>,
    /// By kind of actor that made the move.
    pub by_actor: BTreeMap<String, u64>,
    /// By missing field.
    pub by_field: BTreeMap<String, u64>,
    /// The first violations, one line each.
    pub examples: Vec<String>,
}

/// Replays every rule (or the one named) over the deal moves stored at or after `since`,
/// judging each against the version at the move; stores nothing.
pub async fn backtest(
    store: &Store,
    settings: &Settings,
    since: Millis,
    only_rule: Option<&str>,
) -> Result<Vec<BacktestReport>, RulesError> {
    const EXAMPLES: usize = 20;
    let mut reports = Vec::new();
    for rule in settings
        .rules
        .iter()
        .filter(|rule| only_rule.is_none_or(|name| name == rule.name))
    {
        let mut report = BacktestReport {
            counts: EvaluationReport {
                rule: rule.name.clone(),
                ..EvaluationReport::default()
            },
            ..BacktestReport::default()
        };
        let Some(connection_id) = store.connection_id(&rule.connection).await? else {
            reports.push(report);
            continue;
        };
        let definitions = store
            .stage_definitions(connection_id, ObjectKind::Deal)
            .await?;
        let compiled = CompiledRule::new(rule, &definitions);
        let owners = OwnerIndex::new(store.owners(connection_id).await?);
        let mut pages =
            store.moves_at_version_pages(connection_id, 0, Some(since), 5_000, compiled.fields());
        while let Some(page) = pages.next().await {
            let moves = page?;
            for m in &moves {
                let Some(finding) = judge_move(&compiled, &owners, m, &mut report.counts) else {
                    continue;
                };
                report.would_fire += 1;
                *report
                    .by_kind
                    .entry(finding.kind.as_str().to_string())
                    .or_default() += 1;
                let actor = owners.actor(&m.actor_kind, m.changed_by.as_deref());
                *report
                    .by_actor
                    .entry(actor.as_str().to_string())
                    .or_default() += 1;
                for missing in &finding.missing {
                    *report.by_field.entry(missing.field.clone()).or_default() += 1;
                }
                if report.examples.len() < EXAMPLES {
                    report.examples.push(example_line(m, &finding));
                }
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

fn example_line(m: &crate::store::MoveAtVersion, finding: &super::Finding) -> String {
    let at = chrono::DateTime::from_timestamp_millis(m.changed_at_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default();
    let missing: Vec<&str> = finding.missing.iter().map(|f| f.field.as_str()).collect();
    let mut line = format!(
        "{at} {} {} → {}: {}",
        m.crm_id,
        m.from_stage.as_deref().unwrap_or("(created)"),
        m.to_stage,
        finding.kind.as_str()
    );
    if !missing.is_empty() {
        line.push_str(&format!("; missing {}", missing.join(", ")));
    }
    if !finding.skipped.is_empty() {
        line.push_str(&format!("; skipped {}", finding.skipped.join(", ")));
    }
    line
}

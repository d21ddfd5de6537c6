//! Rules before they act: `rules check` validates them against the stored CRM metadata, and
//! `rules backtest` replays them over the history already stored, writing nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::evaluate::{judge_move, EvaluationReport};
use super::gate::CompiledRule;
use super::{deal_object, OwnerIndex, RulesError};
use crate::config::settings::RuleSettings;
use crate::config::Settings;
use crate::record::{Millis, ObjectKind};
use crate::store::{FieldDefinition, Store};

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

/// Checks every rule's stages and fields against the CRM's metadata the last sync stored:
/// its pipelines' stages and its deal fields. Before a sync brought them, it warns.
pub async fn check(store: &Store, settings: &Settings) -> Result<Vec<RuleCheck>, RulesError> {
    let mut checks = Vec::new();
    for (index, rule) in settings.rules.iter().enumerate() {
        let key = format!("rules[{index}]");
        // Config validation has made sure every rule names a configured connection.
        let Some(connection) = settings
            .connections
            .iter()
            .find(|c| c.name == rule.connection)
        else {
            continue;
        };
        checks.push(RuleCheck {
            rule: rule.name.clone(),
            problems: check_rule(store, &key, rule, deal_object(connection.kind)).await?,
        });
    }
    Ok(checks)
}

/// Checks one rule, `rules[index]` in the config as `key`, against the stored metadata.
pub(super) async fn check_rule(
    store: &Store,
    key: &str,
    rule: &RuleSettings,
    deal_object: &str,
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
    let fields = store.field_definitions(connection_id, deal_object).await?;
    if fields.is_empty() {
        problems.push(warn(format!(
            "{key} ({}): no field metadata of {deal_object} in `{}` is stored yet; fields cannot be checked",
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
        if !fields.iter().any(|f| f.field == *field) {
            problems.push(error(format!(
                "{place}: `{field}` is not a field of {deal_object} in the metadata of connection `{}` ({})",
                rule.connection,
                field_hint(field, &fields)
            )));
        }
    }
    Ok(problems)
}

/// A field the rule may have meant (the same name or label, but for case, spaces,
/// underscores and a custom suffix; else the nearest name within a typo or two), or why a
/// real field may be missing from the metadata.
fn field_hint(named: &str, fields: &[FieldDefinition]) -> String {
    let loose = |text: &str| -> String {
        text.trim_end_matches("__c")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let wanted = loose(named);
    // A transposition counts as one edit; longer names allow a second one.
    let allowed = if wanted.chars().count() >= 8 { 2 } else { 1 };
    let same = fields
        .iter()
        .find(|f| loose(&f.field) == wanted || loose(&f.label) == wanted);
    let near = || {
        fields
            .iter()
            .map(|f| (strsim::damerau_levenshtein(&loose(&f.field), &wanted), f))
            .filter(|(distance, _)| *distance <= allowed)
            .min_by_key(|(distance, f)| (*distance, f.field.len()))
            .map(|(_, f)| f)
    };
    match same.or_else(near) {
        Some(f) => format!("did you mean `{}`, labelled \"{}\"?", f.field, f.label),
        None => "a field hidden from the integration user is not listed either".to_string(),
    }
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
        let own_reverts = store.revert_moves(connection_id).await?;
        let mut pages =
            store.moves_at_version_pages(connection_id, 0, Some(since), 5_000, compiled.fields());
        while let Some(page) = pages.next().await {
            let moves = page?;
            for m in &moves {
                let Some(finding) =
                    judge_move(&compiled, &owners, &own_reverts, m, &mut report.counts)
                else {
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

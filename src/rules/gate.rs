//! The judgement of one stage move against one rule, from the record's fields at the move.
//!
//! Pure and allocation-light: evaluation after a sync, the backtest and the benchmark all call
//! [`CompiledRule::judge`] once per transition.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::settings::RuleSettings;
use crate::store::StageDefinition;

/// What kind of breach a violation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Fields required by the target stage, or by a stage jumped over, were empty.
    Forward,
    /// Stages were jumped over where the rule forbids it (fields may be missing too).
    Skip,
    /// Closed lost without what the rule requires for it (a loss reason).
    ClosedLost,
    /// Moved back without what the rule requires for it.
    Backward,
}

impl ViolationKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Forward => "forward",
            ViolationKind::Skip => "skip",
            ViolationKind::ClosedLost => "closed_lost",
            ViolationKind::Backward => "backward",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<ViolationKind> {
        [
            ViolationKind::Forward,
            ViolationKind::Skip,
            ViolationKind::ClosedLost,
            ViolationKind::Backward,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// A required field that was empty, and the stage that requires it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MissingField {
    /// The stage whose gate names the field.
    pub stage: String,
    /// The field's API name.
    pub field: String,
}

/// What a move breached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The kind of breach.
    pub kind: ViolationKind,
    /// Required fields that were empty at the move.
    pub missing: Vec<MissingField>,
    /// Stages jumped over, in pipeline order.
    pub skipped: Vec<String>,
}

/// One stage of the pipeline as the rule sees it.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    closed: bool,
    won: bool,
}

/// A rule joined with its pipeline's stage order: ready to judge moves quickly.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule as configured.
    pub settings: RuleSettings,
    steps: Vec<Step>,
    position: HashMap<String, usize>,
    gates: HashMap<String, Vec<String>>,
    exempt_owners: HashSet<String>,
    exempt_teams: HashSet<String>,
}

impl CompiledRule {
    /// Joins `rule` with the stored stage definitions of its connection (any pipelines; the
    /// rule's own is picked). Stages that are no longer active keep their place.
    pub fn new(rule: &RuleSettings, definitions: &[StageDefinition]) -> CompiledRule {
        let mut own: Vec<&StageDefinition> = definitions
            .iter()
            .filter(|d| d.pipeline == rule.pipeline)
            .collect();
        own.sort_by(|a, b| a.sort_order.cmp(&b.sort_order).then(a.stage.cmp(&b.stage)));
        let steps: Vec<Step> = own
            .iter()
            .map(|d| Step {
                name: d.stage.clone(),
                closed: d.is_closed,
                won: d.is_won,
            })
            .collect();
        let position = steps
            .iter()
            .enumerate()
            .map(|(index, step)| (step.name.clone(), index))
            .collect();
        CompiledRule {
            settings: rule.clone(),
            steps,
            position,
            gates: rule
                .stages
                .iter()
                .map(|gate| (gate.stage.clone(), gate.required.clone()))
                .collect(),
            exempt_owners: rule.exempt_owners.iter().cloned().collect(),
            exempt_teams: rule.exempt_teams.iter().cloned().collect(),
        }
    }

    /// Every field the judgement of a move reads: what the gates, closed-lost and backward
    /// moves require. Moves are read with only these of their version's fields.
    pub fn fields(&self) -> HashSet<String> {
        self.gates
            .values()
            .flatten()
            .chain(&self.settings.closed_lost_requires)
            .chain(&self.settings.backward_requires)
            .cloned()
            .collect()
    }

    /// Whether the stage metadata of the rule's pipeline is known.
    pub fn has_stages(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Whether a stage exists in the rule's pipeline.
    pub fn knows_stage(&self, stage: &str) -> bool {
        self.position.contains_key(stage)
    }

    /// Position of a stage in the pipeline.
    pub fn position_of(&self, stage: &str) -> Option<usize> {
        self.position.get(stage).copied()
    }

    /// Whether deals of this owner (with these teams) are exempt.
    pub fn exempts<'t>(
        &self,
        owner: Option<&str>,
        teams: impl IntoIterator<Item = &'t str>,
    ) -> bool {
        match owner {
            Some(owner) if self.exempt_owners.contains(owner) => true,
            _ => {
                !self.exempt_teams.is_empty()
                    && teams
                        .into_iter()
                        .any(|team| self.exempt_teams.contains(team))
            }
        }
    }

    /// Judges a move from `from` (`None`: the deal was created in `to`) to `to`, given the
    /// record's fields at the move. `None` when the move breaches nothing or its stages are
    /// not in the rule's pipeline.
    pub fn judge(
        &self,
        from: Option<&str>,
        to: &str,
        fields: &Map<String, Value>,
    ) -> Option<Finding> {
        let target = self.position_of(to)?;
        let step = &self.steps[target];
        if step.closed && !step.won {
            let missing = self.missing(to, &self.settings.closed_lost_requires, fields);
            return (!missing.is_empty()).then_some(Finding {
                kind: ViolationKind::ClosedLost,
                missing,
                skipped: Vec::new(),
            });
        }
        match from.and_then(|from| self.position_of(from)) {
            Some(origin) if origin == target => None,
            Some(origin) if origin > target => {
                let missing = self.missing(to, &self.settings.backward_requires, fields);
                (!missing.is_empty()).then_some(Finding {
                    kind: ViolationKind::Backward,
                    missing,
                    skipped: Vec::new(),
                })
            }
            Some(origin) => self.forward(origin + 1, target, true, fields),
            // Created in a stage (or arrived from another pipeline): the gates of every stage up
            // to it apply, but nothing counts as skipped.
            None => self.forward(0, target, false, fields),
        }
    }

    /// A move into `target` passing the open stages from `first` on.
    fn forward(
        &self,
        first: usize,
        target: usize,
        counts_skips: bool,
        fields: &Map<String, Value>,
    ) -> Option<Finding> {
        let passed = self.steps[first.min(target)..target]
            .iter()
            .filter(|step| !step.closed);
        let skipped: Vec<String> = if counts_skips {
            passed.clone().map(|step| step.name.clone()).collect()
        } else {
            Vec::new()
        };
        let mut missing = Vec::new();
        for step in passed.chain(std::iter::once(&self.steps[target])) {
            if let Some(required) = self.gates.get(&step.name) {
                missing.extend(self.missing(&step.name, required, fields));
            }
        }
        let skip_breach = self.settings.forbid_skipping && !skipped.is_empty();
        if missing.is_empty() && !skip_breach {
            return None;
        }
        Some(Finding {
            kind: if skip_breach {
                ViolationKind::Skip
            } else {
                ViolationKind::Forward
            },
            missing,
            skipped,
        })
    }

    fn missing(
        &self,
        stage: &str,
        required: &[String],
        fields: &Map<String, Value>,
    ) -> Vec<MissingField> {
        required
            .iter()
            .filter(|field| !is_filled(fields.get(field.as_str())))
            .map(|field| MissingField {
                stage: stage.to_string(),
                field: field.clone(),
            })
            .collect()
    }
}

/// A field counts as filled unless absent, null, blank text or an empty list.
pub fn is_filled(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(text)) => !text.trim().is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::{RuleMode, StageGate};
    use crate::record::ObjectKind;
    use serde_json::json;

    fn definitions() -> Vec<StageDefinition> {
        ["One", "Two", "Three", "Four", "Won", "Lost"]
            .iter()
            .enumerate()
            .map(|(index, stage)| StageDefinition {
                kind: ObjectKind::Deal,
                pipeline: "default".into(),
                stage: (*stage).into(),
                label: (*stage).into(),
                sort_order: index as i64,
                probability_bp: None,
                is_closed: index >= 4,
                is_won: index == 4,
                is_active: true,
            })
            .collect()
    }

    fn rule(forbid_skipping: bool) -> CompiledRule {
        let gate = |stage: &str, field: &str| StageGate {
            stage: stage.into(),
            required: vec![field.into()],
            max_dwell: None,
        };
        let settings = RuleSettings {
            name: "r".into(),
            connection: "c".into(),
            pipeline: "default".into(),
            mode: RuleMode::Record,
            dry_run: true,
            max_reverts_per_run: 25,
            channel: None,
            forbid_skipping,
            closed_lost_requires: vec!["reason".into()],
            backward_requires: vec!["note".into()],
            exempt_owners: vec!["boss".into()],
            exempt_teams: vec!["Renewals".into()],
            stages: vec![gate("Two", "b"), gate("Three", "c"), gate("Four", "d")],
        };
        CompiledRule::new(&settings, &definitions())
    }

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_jump_reports_the_fields_of_every_stage_passed_and_the_skipped_stages() {
        let finding = rule(true)
            .judge(Some("One"), "Four", &fields(json!({"b": null, "c": " "})))
            .unwrap();
        assert_eq!(finding.kind, ViolationKind::Skip);
        assert_eq!(finding.skipped, vec!["Two", "Three"]);
        let missing: Vec<&str> = finding.missing.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(missing, vec!["b", "c", "d"]);
    }

    #[test]
    fn filled_fields_pass_and_skips_pass_unless_forbidden() {
        let all = fields(json!({"b": 1, "c": "x", "d": false}));
        assert_eq!(rule(false).judge(Some("One"), "Four", &all), None);
        assert_eq!(rule(true).judge(Some("Three"), "Four", &all), None);
        assert_eq!(
            rule(true).judge(Some("One"), "Four", &all).unwrap().kind,
            ViolationKind::Skip
        );
    }

    #[test]
    fn closed_lost_and_backward_moves_have_their_own_requirements() {
        let none = fields(json!({}));
        let lost = rule(true).judge(Some("Two"), "Lost", &none).unwrap();
        assert_eq!(
            (lost.kind, lost.missing[0].field.as_str()),
            (ViolationKind::ClosedLost, "reason")
        );
        let back = rule(true).judge(Some("Four"), "Two", &none).unwrap();
        assert_eq!(
            (back.kind, back.missing[0].field.as_str()),
            (ViolationKind::Backward, "note")
        );
        assert_eq!(
            rule(true).judge(Some("Four"), "Two", &fields(json!({"note": "why"}))),
            None
        );
    }

    #[test]
    fn owners_and_teams_can_be_exempt() {
        let rule = rule(true);
        assert!(rule.exempts(Some("boss"), []));
        assert!(rule.exempts(Some("rep"), ["Renewals"]));
        assert!(!rule.exempts(Some("rep"), ["New Business"]));
    }
}

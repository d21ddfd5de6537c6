//! `query campaigns --from --to`: per campaign, the members it gained in the window, how many
//! responded, the opportunities and wins they led to at any later time, their amounts, and
//! how far each figure is from the average of all campaigns active in the window.
//!
//! A campaign's opportunities are the deals its members (leads and contacts) converted into
//! or are associated with, plus the deals created in the window with it as primary campaign;
//! each deal counts once per campaign. Wins are those of them closed won now.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{
    format_cents, format_instant, parse_range, resolve_connection, BackendRow, QueryError, Report,
    Table,
};
use crate::record::Millis;
use crate::store::{dispatch, BackendKind, QueryContext, Store};

/// Parameters of `query campaigns` and `GET /api/v1/campaigns`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CampaignsParams {
    /// Start of the window (memberships and primary-campaign deals created from then).
    #[arg(long)]
    pub from: String,
    /// End of the window (after `from`).
    #[arg(long)]
    pub to: String,
    /// Connection name (needed when the store holds several).
    #[arg(long)]
    pub connection: Option<String>,
}

/// The figures of one campaign, or their average.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CampaignFigures {
    /// Memberships created in the window.
    pub members: f64,
    /// Of those, members who responded.
    pub responses: f64,
    /// Deals they led to.
    pub opportunities: f64,
    /// Of those, deals won.
    pub wins: f64,
    /// Amount of the deals, cents.
    pub pipeline_cents: f64,
    /// Amount of the won deals, cents.
    pub won_cents: f64,
}

impl CampaignFigures {
    fn minus(&self, other: &CampaignFigures) -> CampaignFigures {
        CampaignFigures {
            members: self.members - other.members,
            responses: self.responses - other.responses,
            opportunities: self.opportunities - other.opportunities,
            wins: self.wins - other.wins,
            pipeline_cents: self.pipeline_cents - other.pipeline_cents,
            won_cents: self.won_cents - other.won_cents,
        }
    }
}

/// One campaign's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignResult {
    /// CRM id.
    pub campaign_id: String,
    /// Name, if the campaign record is stored.
    pub name: Option<String>,
    /// Its figures.
    pub figures: CampaignFigures,
    /// Its figures minus the average of all campaigns listed.
    pub versus_average: CampaignFigures,
}

/// The answer of `query campaigns`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignsReport {
    /// The connection.
    pub connection: String,
    /// Window start.
    pub from: String,
    /// Window end.
    pub to: String,
    /// The average over the campaigns listed.
    pub average: CampaignFigures,
    /// Campaigns with members or deals in the window, by CRM id.
    pub campaigns: Vec<CampaignResult>,
}

/// Members whose lead or contact is stored carry its id; others count without one. The person
/// is looked up per kind, each on the unique index, rather than with an `IN` over two columns.
macro_rules! members {
    ($campaign:literal, $lead:literal, $contact:literal, $responded:literal) => {
        concat!(
            "SELECT ", $campaign, " AS campaign, \
             COALESCE((SELECT p.id FROM records p WHERE p.connection_id = m.connection_id AND p.object_kind = 'lead' \
                       AND p.crm_id = ", $lead, "), \
                      (SELECT p.id FROM records p WHERE p.connection_id = m.connection_id AND p.object_kind = 'contact' \
                       AND p.crm_id = ", $contact, ")) AS person, ",
            $responded, " AS responded \
             FROM records m WHERE m.connection_id = $1 AND m.object_kind = 'campaign_member' AND m.deleted_at_ms IS NULL \
             AND m.crm_created_at_ms >= $2 AND m.crm_created_at_ms < $3"
        )
    };
}

/// The deals (not deleted) each member's person converted into or is associated with, either
/// way round, with their amount and outcome: only the window's members are followed.
macro_rules! member_deals {
    ($($members:tt)*) => {
        concat!(
            "WITH persons AS (SELECT DISTINCT person FROM (", $($members)*, ") AS members WHERE person IS NOT NULL) \
             SELECT p.person, d.id, d.amount_cents, d.is_won FROM persons p JOIN records a ON a.id = p.person \
             JOIN record_links k ON k.connection_id = a.connection_id AND k.from_kind = a.object_kind \
             AND k.from_crm_id = a.crm_id AND k.to_kind = 'deal' \
             JOIN records d ON d.connection_id = k.connection_id AND d.object_kind = 'deal' AND d.crm_id = k.to_crm_id \
             WHERE k.removed_at_ms IS NULL AND k.relation IN ('converted_to', 'associated_with') AND d.deleted_at_ms IS NULL \
             UNION ALL SELECT p.person, d.id, d.amount_cents, d.is_won FROM persons p JOIN records a ON a.id = p.person \
             JOIN record_links k ON k.connection_id = a.connection_id AND k.to_kind = a.object_kind \
             AND k.to_crm_id = a.crm_id AND k.from_kind = 'deal' \
             JOIN records d ON d.connection_id = k.connection_id AND d.object_kind = 'deal' AND d.crm_id = k.from_crm_id \
             WHERE k.removed_at_ms IS NULL AND k.relation IN ('converted_to', 'associated_with') AND d.deleted_at_ms IS NULL"
        )
    };
}

macro_rules! members_sqlite {
    () => {
        members!(
            "json_extract(m.fields, '$.CampaignId')",
            "json_extract(m.fields, '$.LeadId')",
            "json_extract(m.fields, '$.ContactId')",
            "COALESCE(json_extract(m.fields, '$.HasResponded'), 0) = 1"
        )
    };
}

macro_rules! members_postgres {
    () => {
        members!(
            "m.fields->>'CampaignId'",
            "m.fields->>'LeadId'",
            "m.fields->>'ContactId'",
            "COALESCE(m.fields->>'HasResponded', 'false') = 'true'"
        )
    };
}

/// (members, their deals) for (SQLite, PostgreSQL): the JSON operators are each backend's own.
const MEMBER_QUERIES: [(&str, &str); 2] = [
    (members_sqlite!(), member_deals!(members_sqlite!())),
    (members_postgres!(), member_deals!(members_postgres!())),
];

const PRIMARY_DEALS: &str =
    "SELECT campaign_id, id, amount_cents, is_won FROM records WHERE connection_id = $1 \
     AND object_kind = 'deal' AND campaign_id IS NOT NULL AND deleted_at_ms IS NULL \
     AND crm_created_at_ms >= $2 AND crm_created_at_ms < $3";

/// Answers `query campaigns`.
pub async fn run(store: &Store, params: &CampaignsParams) -> Result<CampaignsReport, QueryError> {
    let (from, to) = parse_range(&params.from, &params.to)?;
    let connection = resolve_connection(store, params.connection.as_deref()).await?;
    let (members_sql, member_deals_sql) = match store.backend() {
        BackendKind::Sqlite => MEMBER_QUERIES[0],
        BackendKind::Postgres => MEMBER_QUERIES[1],
    };
    let window = (connection.id, from, to);
    let members: Vec<(Option<String>, Option<i64>, bool)> =
        in_window(store, members_sql, window, "read campaign members").await?;
    let member_deals: Vec<(i64, i64, Option<i64>, bool)> = in_window(
        store,
        member_deals_sql,
        window,
        "read the deals of campaign members",
    )
    .await?;
    let primary: Vec<(String, i64, Option<i64>, bool)> =
        in_window(store, PRIMARY_DEALS, window, "read primary-campaign deals").await?;
    let names: HashMap<String, Option<String>> = dispatch!(store.pool(), pool => sqlx::query_as(
        "SELECT crm_id, name FROM records WHERE connection_id = $1 AND object_kind = 'campaign'",
    )
    .bind(connection.id)
    .fetch_all(pool)
    .await)
    .during("read campaigns")?
    .into_iter()
    .collect();
    let mut deals: HashMap<i64, (Option<i64>, bool)> = HashMap::new();
    let mut deals_of: HashMap<i64, Vec<i64>> = HashMap::new();
    for (person, deal, amount, won) in member_deals {
        deals.insert(deal, (amount, won));
        deals_of.entry(person).or_default().push(deal);
    }

    let mut tallies: BTreeMap<String, (i64, i64, BTreeSet<i64>)> = BTreeMap::new();
    for (campaign, person, responded) in members {
        let Some(campaign) = campaign else { continue };
        let tally = tallies.entry(campaign).or_default();
        tally.0 += 1;
        tally.1 += i64::from(responded);
        let led_to = person.and_then(|p| deals_of.get(&p)).into_iter().flatten();
        tally.2.extend(led_to);
    }
    for (campaign, deal, amount, won) in primary {
        deals.insert(deal, (amount, won));
        tallies.entry(campaign).or_default().2.insert(deal);
    }
    let figures: Vec<(String, CampaignFigures)> = tallies
        .into_iter()
        .map(|(campaign, (members, responses, led_to))| {
            let (mut pipeline, mut won, mut wins) = (0i64, 0i64, 0i64);
            for deal in &led_to {
                let (amount, is_won) = deals[deal];
                pipeline += amount.unwrap_or(0);
                if is_won {
                    wins += 1;
                    won += amount.unwrap_or(0);
                }
            }
            let figures = CampaignFigures {
                members: members as f64,
                responses: responses as f64,
                opportunities: led_to.len() as f64,
                wins: wins as f64,
                pipeline_cents: pipeline as f64,
                won_cents: won as f64,
            };
            (campaign, figures)
        })
        .collect();
    let average = average(figures.iter().map(|(_, f)| f));
    let campaigns = figures
        .into_iter()
        .map(|(campaign_id, figures)| CampaignResult {
            name: names.get(&campaign_id).cloned().flatten(),
            versus_average: figures.minus(&average),
            campaign_id,
            figures,
        })
        .collect();
    Ok(CampaignsReport {
        connection: connection.name,
        from: format_instant(from),
        to: format_instant(to),
        average,
        campaigns,
    })
}

/// Runs a query whose parameters are the connection and the window, `$1` to `$3`.
async fn in_window<T>(
    store: &Store,
    sql: &'static str,
    (connection_id, from, to): (i64, Millis, Millis),
    operation: &'static str,
) -> Result<Vec<T>, QueryError>
where
    T: BackendRow,
{
    Ok(dispatch!(store.pool(), pool => sqlx::query_as(sql)
        .bind(connection_id)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await)
    .during(operation)?)
}

/// The mean of each figure, rounded to two decimals so that every backend prints the same.
fn average<'a>(all: impl Iterator<Item = &'a CampaignFigures>) -> CampaignFigures {
    let all: Vec<&CampaignFigures> = all.collect();
    if all.is_empty() {
        return CampaignFigures::default();
    }
    let n = all.len() as f64;
    let mean = |pick: fn(&CampaignFigures) -> f64| {
        (all.iter().map(|f| pick(f)).sum::<f64>() / n * 100.0).round() / 100.0
    };
    CampaignFigures {
        members: mean(|f| f.members),
        responses: mean(|f| f.responses),
        opportunities: mean(|f| f.opportunities),
        wins: mean(|f| f.wins),
        pipeline_cents: mean(|f| f.pipeline_cents),
        won_cents: mean(|f| f.won_cents),
    }
}

impl Report for CampaignsReport {
    fn tables(&self) -> Vec<Table> {
        let mut table = Table::new(
            format!(
                "Campaigns of {} from {} to {}",
                self.connection, self.from, self.to
            ),
            &[
                "campaign",
                "name",
                "members",
                "responses",
                "opportunities",
                "wins",
                "pipeline",
                "won",
                "members vs avg",
                "wins vs avg",
                "won vs avg",
            ],
        );
        let number = |x: f64| {
            format!("{x:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        };
        let money = |cents: f64| format_cents(cents.round() as i64);
        for c in &self.campaigns {
            table.push(vec![
                c.campaign_id.clone(),
                c.name.clone().unwrap_or_default(),
                number(c.figures.members),
                number(c.figures.responses),
                number(c.figures.opportunities),
                number(c.figures.wins),
                money(c.figures.pipeline_cents),
                money(c.figures.won_cents),
                format!("{:+.2}", c.versus_average.members),
                format!("{:+.2}", c.versus_average.wins),
                money(c.versus_average.won_cents),
            ]);
        }
        let a = &self.average;
        table.push(vec![
            "AVERAGE".into(),
            String::new(),
            number(a.members),
            number(a.responses),
            number(a.opportunities),
            number(a.wins),
            money(a.pipeline_cents),
            money(a.won_cents),
            String::new(),
            String::new(),
            String::new(),
        ]);
        vec![table]
    }
}

//! Relations between records by CRM id (`record_links`): HubSpot deal–contact associations and
//! Salesforce lead conversions.
//!
//! Links name records by CRM id, so a link can arrive before the record it points to has been
//! synced; the store ids of both ends (`from_record_id`, `to_record_id`) are filled in by
//! triggers once both are stored (migration 12).

use std::collections::HashSet;

use sqlx::QueryBuilder;

use super::{dispatch, QueryContext, Store, StoreError, StoreTx, ROWS_PER_STATEMENT};
use crate::record::{Millis, ObjectKind};

/// A relation between two records of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordLink {
    /// Kind of the record the link starts from.
    pub from_kind: ObjectKind,
    /// Its CRM id.
    pub from_crm_id: String,
    /// `associated_with`, `converted_to`, `member_of` or `belongs_to`.
    pub relation: String,
    /// Kind of the record it points to.
    pub to_kind: ObjectKind,
    /// Its CRM id.
    pub to_crm_id: String,
}

impl StoreTx {
    /// Stores links as seen now, a few hundred per statement; seeing one again only moves its
    /// last-seen time. A link listed twice is stored once: one statement cannot update a row
    /// twice.
    pub async fn upsert_links(
        &mut self,
        connection_id: i64,
        links: &[RecordLink],
        seen_at: Millis,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let unique: Vec<&RecordLink> = links.iter().filter(|link| seen.insert(*link)).collect();
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            dispatch!(self.inner(), tx => {
                let mut query = QueryBuilder::new(
                    "INSERT INTO record_links (connection_id, from_kind, from_crm_id, relation, to_kind, \
                     to_crm_id, first_seen_at_ms, last_seen_at_ms) ",
                );
                query.push_values(chunk, |mut row, link| {
                    row.push_bind(connection_id)
                        .push_bind(link.from_kind.as_str())
                        .push_bind(&link.from_crm_id)
                        .push_bind(&link.relation)
                        .push_bind(link.to_kind.as_str())
                        .push_bind(&link.to_crm_id)
                        .push_bind(seen_at)
                        .push_bind(seen_at);
                });
                query.push(
                    " ON CONFLICT (connection_id, from_kind, from_crm_id, relation, to_kind, to_crm_id) \
                     DO UPDATE SET last_seen_at_ms = excluded.last_seen_at_ms, removed_at_ms = NULL",
                );
                query.build().execute(&mut **tx).await.map(drop)
            })
            .during("store record links")?;
        }
        Ok(())
    }
}

impl Store {
    /// The links that start from a record and are not removed, ordered by target.
    pub async fn links_from(
        &self,
        connection_id: i64,
        from_kind: ObjectKind,
        from_crm_id: &str,
    ) -> Result<Vec<RecordLink>, StoreError> {
        let rows: Vec<(String, String, String)> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT relation, to_kind, to_crm_id FROM record_links WHERE connection_id = $1 AND from_kind = $2 \
             AND from_crm_id = $3 AND removed_at_ms IS NULL ORDER BY to_kind, to_crm_id, relation",
        )
        .bind(connection_id)
        .bind(from_kind.as_str())
        .bind(from_crm_id)
        .fetch_all(pool)
        .await)
        .during("read record links")?;
        rows.into_iter()
            .map(|(relation, to_kind, to_crm_id)| {
                let to_kind = ObjectKind::parse(&to_kind).ok_or_else(|| {
                    StoreError::Conflict(format!("unknown object kind `{to_kind}` in record_links"))
                })?;
                Ok(RecordLink {
                    from_kind,
                    from_crm_id: from_crm_id.to_string(),
                    relation,
                    to_kind,
                    to_crm_id,
                })
            })
            .collect()
    }
}

//! CRM metadata: stage order and meaning, which rules, funnels and lifecycle events read;
//! record owners, which rules read to tell people from queues; and each object's fields, which
//! `rules check` compares rules with.

use serde_json::Value;
use sqlx::types::Json;

use super::{dispatch, QueryContext, Store, StoreError, StoreTx};
use crate::record::{Millis, ObjectKind};

/// One stage of a pipeline (deals) or one status (leads), as the CRM defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDefinition {
    /// Deal or lead.
    pub kind: ObjectKind,
    /// Pipeline id, or `default`.
    pub pipeline: String,
    /// Stage name (Salesforce) or id (HubSpot).
    pub stage: String,
    /// Label shown to users.
    pub label: String,
    /// Position in the pipeline, ascending.
    pub sort_order: i64,
    /// Default win probability, in basis points.
    pub probability_bp: Option<i64>,
    /// A closed stage.
    pub is_closed: bool,
    /// The won stage.
    pub is_won: bool,
    /// Still in use.
    pub is_active: bool,
}

/// One field (Salesforce) or property (HubSpot) of a CRM object, as its metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FieldDefinition {
    /// API name.
    pub field: String,
    /// Label shown to users.
    pub label: String,
    /// The CRM's type name (`currency`, `enumeration`, …).
    pub data_type: String,
    /// Usable in a query's filter.
    pub filterable: bool,
    /// Defined by the customer rather than the CRM.
    pub is_custom: bool,
}

/// The stored fields of one CRM object, by name: `$1` connection, `$2` object.
const FIELDS_OF_OBJECT: &str = "SELECT field, label, data_type, filterable, is_custom \
     FROM field_definitions WHERE connection_id = $1 AND crm_object = $2 ORDER BY field";

/// A user or queue that can own records, as the CRM lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmOwner {
    /// The CRM's owner id (what records' owner fields hold).
    pub crm_id: String,
    /// `person`, `queue` or `integration`.
    pub kind: String,
    /// Display name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Teams, as a JSON array.
    pub teams: Value,
    /// Not deactivated.
    pub is_active: bool,
}

impl StoreTx {
    /// Replaces the stored fields of `crm_object` with `fields`, the object's metadata as the
    /// CRM listed it now (fields it no longer lists are gone). Every sync lists them, and they
    /// rarely change, so an unchanged list writes nothing (`observed_at` is then when the
    /// stored list was first seen).
    pub async fn replace_field_definitions(
        &mut self,
        connection_id: i64,
        crm_object: &str,
        fields: &[FieldDefinition],
        observed_at: Millis,
    ) -> Result<(), StoreError> {
        let mut stored: Vec<FieldDefinition> =
            dispatch!(self.inner(), tx => sqlx::query_as(FIELDS_OF_OBJECT)
                .bind(connection_id)
                .bind(crm_object)
                .fetch_all(&mut **tx)
                .await)
            .during("read field definitions")?;
        let mut listed = fields.to_vec();
        // Compared in Rust's order: the database's collation may order names differently.
        stored.sort_by(|a, b| a.field.cmp(&b.field));
        listed.sort_by(|a, b| a.field.cmp(&b.field));
        if listed == stored {
            return Ok(());
        }
        dispatch!(self.inner(), tx => sqlx::query(
            "DELETE FROM field_definitions WHERE connection_id = $1 AND crm_object = $2",
        )
        .bind(connection_id)
        .bind(crm_object)
        .execute(&mut **tx)
        .await
        .map(drop))
        .during("replace field definitions")?;
        for chunk in fields.chunks(super::ROWS_PER_STATEMENT) {
            dispatch!(self.inner(), tx => {
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO field_definitions (connection_id, crm_object, field, label, data_type, \
                     filterable, is_custom, observed_at_ms) ",
                );
                query.push_values(chunk, |mut row, f| {
                    row.push_bind(connection_id)
                        .push_bind(crm_object)
                        .push_bind(&f.field)
                        .push_bind(&f.label)
                        .push_bind(&f.data_type)
                        .push_bind(f.filterable)
                        .push_bind(f.is_custom)
                        .push_bind(observed_at);
                });
                query.build().execute(&mut **tx).await.map(drop)
            })
            .during("store field definitions")?;
        }
        Ok(())
    }

    /// Stores an owner as last seen, replacing what was stored for it.
    pub async fn upsert_owner(
        &mut self,
        connection_id: i64,
        owner: &CrmOwner,
        observed_at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO crm_owners (connection_id, crm_id, kind, name, email, teams, is_active, observed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (connection_id, crm_id) DO UPDATE SET \
             kind = excluded.kind, name = excluded.name, email = excluded.email, teams = excluded.teams, \
             is_active = excluded.is_active, observed_at_ms = excluded.observed_at_ms",
        )
        .bind(connection_id)
        .bind(&owner.crm_id)
        .bind(&owner.kind)
        .bind(owner.name.as_deref())
        .bind(owner.email.as_deref())
        .bind(Json(&owner.teams))
        .bind(owner.is_active)
        .bind(observed_at)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("store owner")
        .map(drop)
    }

    /// Stores a stage definition as last seen, replacing what was stored for it.
    pub async fn upsert_stage_definition(
        &mut self,
        connection_id: i64,
        stage: &StageDefinition,
        observed_at: Millis,
    ) -> Result<(), StoreError> {
        dispatch!(self.inner(), tx => sqlx::query(
            "INSERT INTO stage_definitions (connection_id, object_kind, pipeline, stage, label, sort_order, \
             probability_bp, is_closed, is_won, is_active, observed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (connection_id, object_kind, pipeline, stage) DO UPDATE SET label = excluded.label, \
             sort_order = excluded.sort_order, probability_bp = excluded.probability_bp, is_closed = excluded.is_closed, \
             is_won = excluded.is_won, is_active = excluded.is_active, observed_at_ms = excluded.observed_at_ms",
        )
        .bind(connection_id)
        .bind(stage.kind.as_str())
        .bind(&stage.pipeline)
        .bind(&stage.stage)
        .bind(&stage.label)
        .bind(stage.sort_order)
        .bind(stage.probability_bp)
        .bind(stage.is_closed)
        .bind(stage.is_won)
        .bind(stage.is_active)
        .bind(observed_at)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected()))
        .during("store stage definition")
        .map(drop)
    }
}

impl Store {
    /// The fields of `crm_object` the last sync found in the CRM's metadata, by name.
    pub async fn field_definitions(
        &self,
        connection_id: i64,
        crm_object: &str,
    ) -> Result<Vec<FieldDefinition>, StoreError> {
        dispatch!(self.pool(), pool => sqlx::query_as(FIELDS_OF_OBJECT)
        .bind(connection_id)
        .bind(crm_object)
        .fetch_all(pool)
        .await)
        .during("read field definitions")
    }

    /// The stored owners of a connection, by CRM id.
    pub async fn owners(&self, connection_id: i64) -> Result<Vec<CrmOwner>, StoreError> {
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Json<Value>,
            bool,
        );
        let rows: Vec<Row> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT crm_id, kind, name, email, teams, is_active FROM crm_owners WHERE connection_id = $1 ORDER BY crm_id",
        )
        .bind(connection_id)
        .fetch_all(pool)
        .await)
        .during("read owners")?;
        Ok(rows
            .into_iter()
            .map(
                |(crm_id, kind, name, email, Json(teams), is_active)| CrmOwner {
                    crm_id,
                    kind,
                    name,
                    email,
                    teams,
                    is_active,
                },
            )
            .collect())
    }

    /// The stored stages of a connection's deals or leads, in pipeline order.
    pub async fn stage_definitions(
        &self,
        connection_id: i64,
        kind: ObjectKind,
    ) -> Result<Vec<StageDefinition>, StoreError> {
        type Row = (String, String, String, i64, Option<i64>, bool, bool, bool);
        let rows: Vec<Row> = dispatch!(self.pool(), pool => sqlx::query_as(
            "SELECT pipeline, stage, label, sort_order, probability_bp, is_closed, is_won, is_active \
             FROM stage_definitions WHERE connection_id = $1 AND object_kind = $2 ORDER BY pipeline, sort_order, stage",
        )
        .bind(connection_id)
        .bind(kind.as_str())
        .fetch_all(pool)
        .await)
        .during("read stage definitions")?;
        Ok(rows
            .into_iter()
            .map(|r| StageDefinition {
                kind,
                pipeline: r.0,
                stage: r.1,
                label: r.2,
                sort_order: r.3,
                probability_bp: r.4,
                is_closed: r.5,
                is_won: r.6,
                is_active: r.7,
            })
            .collect())
    }
}

//! Rotated refresh tokens (`rotated_refresh_tokens`): when a CRM rotates a connection's refresh
//! token the configured one stops working, so the newest is kept here for every later run, every
//! other client of the connection and every replica.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{dispatch, QueryContext, Store, StoreError};
use crate::config::settings::{AuthSettings, ConnectionSettings};
use crate::crm::{KeeperError, RefreshTokenKeeper};
use crate::record::Millis;

/// Keeps one connection's rotated refresh token in the store.
#[derive(Debug, Clone)]
pub struct StoredRefreshTokens {
    store: Store,
    connection_id: i64,
    /// SHA-256 of the configured refresh token: a kept token continues that one only.
    configured_sha256: String,
}

impl StoredRefreshTokens {
    /// A keeper for the connection, if it authenticates with a refresh token at all.
    pub fn for_connection(
        store: &Store,
        connection_id: i64,
        settings: &ConnectionSettings,
    ) -> Option<Arc<dyn RefreshTokenKeeper>> {
        let configured = match &settings.auth {
            AuthSettings::RefreshToken { refresh_token, .. }
            | AuthSettings::Oauth { refresh_token, .. } => refresh_token.expose(),
            _ => return None,
        };
        Some(Arc::new(StoredRefreshTokens {
            store: store.clone(),
            connection_id,
            configured_sha256: Sha256::digest(configured.as_bytes())
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        }))
    }

    async fn latest_kept(&self) -> Result<Option<SecretString>, StoreError> {
        let row: Option<(String,)> = dispatch!(self.store.pool(), pool => sqlx::query_as(
            "SELECT refresh_token FROM rotated_refresh_tokens \
             WHERE connection_id = $1 AND configured_sha256 = $2",
        )
        .bind(self.connection_id)
        .bind(&self.configured_sha256)
        .fetch_optional(pool)
        .await)
        .during("read the rotated refresh token")?;
        Ok(row.map(|(token,)| token.into()))
    }

    async fn keep_token(&self, token: &SecretString, at: Millis) -> Result<(), StoreError> {
        dispatch!(self.store.pool(), pool => sqlx::query(
            "INSERT INTO rotated_refresh_tokens (connection_id, configured_sha256, refresh_token, rotated_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (connection_id) DO UPDATE SET \
             configured_sha256 = excluded.configured_sha256, refresh_token = excluded.refresh_token, \
             rotated_at_ms = excluded.rotated_at_ms",
        )
        .bind(self.connection_id)
        .bind(&self.configured_sha256)
        .bind(token.expose_secret())
        .bind(at)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .during("keep the rotated refresh token")
        .map(drop)
    }
}

impl RefreshTokenKeeper for StoredRefreshTokens {
    fn latest(&self) -> BoxFuture<'_, Result<Option<SecretString>, KeeperError>> {
        Box::pin(async move { Ok(self.latest_kept().await?) })
    }

    fn keep(&self, token: SecretString, at: Millis) -> BoxFuture<'_, Result<(), KeeperError>> {
        Box::pin(async move { Ok(self.keep_token(&token, at).await?) })
    }
}

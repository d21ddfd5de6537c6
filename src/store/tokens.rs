//! Rotated refresh tokens (`rotated_refresh_tokens`): when a CRM rotates a connection's refresh
//! token the configured one stops working, so the newest is kept here for every later run, every
//! other client of the connection and every replica.
//!
//! A kept token is sealed (AES-256-GCM) under a key derived from the configured refresh token,
//! which the store never holds: a copy of the database alone yields no working credential, and
//! a row cannot be moved to another connection (the connection and the configured token's
//! fingerprint are authenticated with it). A row kept before sealing is sealed when it is
//! first read.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{dispatch, QueryContext, Store, StoreError};
use crate::config::settings::{AuthSettings, ConnectionSettings};
use crate::crm::{KeeperError, RefreshTokenKeeper};
use crate::record::Millis;

/// What a sealed token starts with in the store.
const SEALED_PREFIX: &str = "sealed-v1:";

/// Keeps one connection's rotated refresh token in the store.
#[derive(Debug, Clone)]
pub struct StoredRefreshTokens {
    store: Store,
    connection_id: i64,
    /// SHA-256 of the configured refresh token: a kept token continues that one only.
    configured_sha256: String,
    /// Seals and opens the kept token.
    seal: TokenSeal,
}

/// Seals a connection's kept token for the store, and opens it again.
#[derive(Debug, Clone)]
struct TokenSeal {
    key: Arc<LessSafeKey>,
    /// What the seal authenticates besides the token: whose it is.
    aad: String,
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
        let configured_sha256: String = Sha256::digest(configured.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Some(Arc::new(StoredRefreshTokens {
            store: store.clone(),
            connection_id,
            seal: TokenSeal::new(configured, &format!("{connection_id}:{configured_sha256}")),
            configured_sha256,
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
        let Some((stored,)) = row else {
            return Ok(None);
        };
        if !stored.starts_with(SEALED_PREFIX) {
            self.seal_legacy_row(&stored).await?;
        }
        let opened = self.seal.open(stored);
        if opened.is_none() {
            tracing::warn!(
                connection_id = self.connection_id,
                "the kept refresh token's seal does not open; using the configured token"
            );
        }
        Ok(opened)
    }

    /// Seals a token kept before tokens were sealed, where it is still the kept one.
    async fn seal_legacy_row(&self, plain: &str) -> Result<(), StoreError> {
        let sealed = self.seal.seal(plain)?;
        dispatch!(self.store.pool(), pool => sqlx::query(
            "UPDATE rotated_refresh_tokens SET refresh_token = $3 \
             WHERE connection_id = $1 AND refresh_token = $2",
        )
        .bind(self.connection_id)
        .bind(plain)
        .bind(sealed)
        .execute(pool)
        .await
        .map(drop))
        .during("seal a kept refresh token")
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
        .bind(self.seal.seal(token.expose_secret())?)
        .bind(at)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .during("keep the rotated refresh token")
        .map(drop)
    }
}

impl TokenSeal {
    /// The seal of the token kept for `configured`, authenticating `aad` with it.
    fn new(configured: &str, aad: &str) -> TokenSeal {
        TokenSeal {
            key: Arc::new(sealing_key(configured)),
            aad: aad.to_string(),
        }
    }

    /// The token as stored: `sealed-v1:` and the base64 of a fresh nonce and the ciphertext.
    fn seal(&self, token: &str) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StoreError::Sealing("no random nonce"))?;
        let mut sealed = token.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Sealing("the cipher refused it"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", BASE64.encode(stored)))
    }

    /// The token a stored value holds; `None` when the seal does not open (a damaged row, or
    /// one sealed for another connection), so the configured token is used instead.
    fn open(&self, stored: String) -> Option<SecretString> {
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            // Kept before tokens were sealed.
            return Some(stored.into());
        };
        let bytes = BASE64.decode(encoded).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(self.aad.as_bytes()), &mut sealed)
            .ok()?;
        String::from_utf8(opened.to_vec())
            .ok()
            .map(SecretString::from)
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

/// The sealing key of a connection: SHA-256 of a label and the configured refresh token (not
/// the stored fingerprint, which is SHA-256 of the token alone).
fn sealing_key(configured: &str) -> LessSafeKey {
    let mut hasher = Sha256::new();
    hasher.update(b"pipewarden rotated refresh token key v1\0");
    hasher.update(configured.as_bytes());
    let bytes = hasher.finalize();
    let unbound =
        UnboundKey::new(&AES_256_GCM, &bytes).expect("a SHA-256 digest is an AES-256 key");
    LessSafeKey::new(unbound)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::TokenSeal;

    #[test]
    fn a_sealed_token_opens_only_with_its_key_and_owner() {
        let seal = TokenSeal::new("configured-token", "7:abc");
        let stored = seal.seal("rotated-token").unwrap();
        assert!(stored.starts_with("sealed-v1:") && !stored.contains("rotated-token"));
        let opened = seal.open(stored.clone()).unwrap();
        assert_eq!(opened.expose_secret(), "rotated-token");
        assert_ne!(
            stored,
            seal.seal("rotated-token").unwrap(),
            "a fresh nonce each time"
        );

        let other_key = TokenSeal::new("another-configured-token", "7:abc");
        assert!(other_key.open(stored.clone()).is_none());
        let other_owner = TokenSeal::new("configured-token", "8:abc");
        assert!(other_owner.open(stored.clone()).is_none());
        let mut tampered = stored.clone();
        tampered.replace_range(20..21, if &stored[20..21] == "A" { "B" } else { "A" });
        assert!(seal.open(tampered).is_none());
        let legacy = seal.open("kept-before-sealing".to_string()).unwrap();
        assert_eq!(legacy.expose_secret(), "kept-before-sealing");
    }
}

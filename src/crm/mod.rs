//! Talking to the CRMs: the shared HTTP layer and one client per CRM.
//!
//! [`http::ApiClient`] is what both connectors call through: it holds the connection's token
//! manager, rate limiter, retry policy and daily API budget, so that a connector only says
//! which request to make and how to read the answer. [`salesforce`] speaks the Salesforce
//! REST API, [`salesforce_bulk`] its Bulk API 2.0 query jobs, [`hubspot`] the HubSpot CRM API.

pub mod http;
pub mod hubspot;
mod limits;
pub mod salesforce;
pub mod salesforce_bulk;
mod tokens;

pub use http::{ApiClient, ApiRequest, ApiStats, Reply, RetryPolicy};
pub use limits::BudgetUse;
pub use tokens::{KeeperError, RefreshTokenKeeper};

/// Why a call to a CRM failed, after whatever retries it deserved. Messages name the
/// connection, the request and the CRM's own error code; never a token or secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CrmError {
    /// The request never got a usable answer: connection refused or reset, timeout, a body
    /// cut short, or 5xx and 429 answers that outlasted every retry.
    #[error("connection `{connection}`: {request} failed after {attempts} attempt(s): {detail}")]
    Unavailable {
        /// Connection name.
        connection: String,
        /// Method and path.
        request: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
    /// The CRM answered with an error that retrying will not change.
    #[error("connection `{connection}`: {request} answered HTTP {status} {code}: {message}")]
    Api {
        /// Connection name.
        connection: String,
        /// Method and path.
        request: String,
        /// HTTP status.
        status: u16,
        /// The CRM's error code (`INVALID_FIELD`, `VALIDATION_ERROR`, …).
        code: String,
        /// The CRM's message.
        message: String,
    },
    /// The CRM refused the credentials, or the token endpoint refused to issue a token.
    #[error("connection `{connection}`: authentication failed: {code}: {description}")]
    Auth {
        /// Connection name.
        connection: String,
        /// OAuth error or CRM error code (`invalid_grant`, `INVALID_SESSION_ID`, …).
        code: String,
        /// What the CRM said.
        description: String,
    },
    /// The share of the daily API allocation this run may use is spent, or the org is near
    /// its ceiling; the run stops at its last checkpoint and the next one resumes.
    #[error("connection `{connection}`: API budget reached: {detail}")]
    Budget {
        /// Connection name.
        connection: String,
        /// Usage figures.
        detail: String,
    },
    /// A 2xx answer that does not have the shape the API documents.
    #[error("connection `{connection}`: {request}: unexpected answer: {detail}")]
    Decode {
        /// Connection name.
        connection: String,
        /// Method and path.
        request: String,
        /// What did not fit.
        detail: String,
    },
    /// A stop was asked for (shutdown) while the call waited or was in flight; it was
    /// abandoned, and whatever it would have read is read again by the next run.
    #[error("connection `{connection}`: {request} abandoned: a stop was asked for")]
    Interrupted {
        /// Connection name.
        connection: String,
        /// Method and path.
        request: String,
    },
    /// The configuration cannot work (a key file that is not a key, a URL that is not one).
    #[error("connection `{connection}`: {detail}")]
    Setup {
        /// Connection name.
        connection: String,
        /// What is wrong.
        detail: String,
    },
}

impl CrmError {
    /// The CRM's error code, when the CRM answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CrmError::Api { code, .. } | CrmError::Auth { code, .. } => Some(code),
            _ => None,
        }
    }
}

//! The HTTP API under `/api/v1/`: the same queries as `pipewarden query …`, with the same
//! parameters as query-string keys, answered as JSON.
//!
//! Every route sits behind the bearer token of `[api] bearer_token` (compared in constant
//! time), when one is configured; the configuration refuses a listener beyond loopback
//! without one. Errors are JSON `{"error": {"code", "message", "parameter"?}}` with a status
//! that says whose fault it is: 400 for a bad parameter, 401 for a missing or wrong token,
//! 404 for an unknown record, 500 for a store failure.
//!
//! Adding a route: write a handler that returns `Result<Json<_>, ApiError>` (a
//! [`QueryError`] converts with `?`; [`parameters`] turns a query-string rejection into a
//! 400), add one `.route("/name", get(handler))` line in [`routes`] (paths there are
//! relative to `/api/v1`), and describe it in `openapi.rs`.

mod openapi;
mod violations;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::query::{self, QueryError};
use crate::store::Store;

/// What the API handlers read.
pub struct ApiState {
    /// The snapshot store.
    pub store: Store,
    /// The settings (bearer token, stage gates for the funnel's `max_dwell`).
    pub settings: Settings,
}

/// The `/api/v1` routes, behind the bearer-token check; merge them into the daemon's router.
pub fn routes(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/as-of", get(as_of))
        .route("/history", get(history))
        .route("/pipeline-diff", get(pipeline_diff))
        .route("/funnel", get(funnel))
        .route("/cohort", get(cohort))
        .route("/campaigns", get(campaigns))
        .route("/recycled", get(recycled))
        .route("/violations", get(violations::list))
        .route("/violations/{id}/waive", post(violations::waive))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    Router::new().nest("/api/v1", v1)
}

/// An error answer: status, a stable code for programs, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`bad_parameter`, `unauthorized`, …).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// The parameter at fault, for 400s about one.
    pub parameter: Option<&'static str>,
}

impl ApiError {
    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_parameter",
            message: message.into(),
            parameter: None,
        }
    }

    /// A 500 whose cause stays in the log: clients learn only that the server failed.
    pub fn internal() -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: "pipewarden failed to answer; see its log".into(),
            parameter: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(parameter) = self.parameter {
            error["parameter"] = json!(parameter);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> ApiError {
        match err {
            QueryError::BadParameter { parameter, message } => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "bad_parameter",
                message: format!("parameter `{parameter}`: {message}"),
                parameter: Some(parameter),
            },
            QueryError::NotFound(message) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message,
                parameter: None,
            },
            QueryError::Store(err) => {
                tracing::error!(error = %err, "query failed in the store");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "store_error",
                    message: "the store could not answer; see the pipewarden log".into(),
                    parameter: None,
                }
            }
        }
    }
}

/// Reads a query string into a parameter struct; a missing, unknown or malformed key is a 400
/// that names it.
pub fn parameters<P: DeserializeOwned>(
    query: Result<Query<P>, QueryRejection>,
) -> Result<P, ApiError> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// Lets a request through only with the configured bearer token.
async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.settings.api.bearer_token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    // Equal lengths are compared byte by byte in constant time; only the length can leak.
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: "missing or wrong bearer token (send `Authorization: Bearer <api.bearer_token>`)"
            .into(),
        parameter: None,
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!(
            "no API route /api/v1{}; see /api/v1/openapi.json",
            request.uri().path()
        ),
        parameter: None,
    }
}

async fn as_of(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::as_of::AsOfParams>, QueryRejection>,
) -> Result<Json<query::as_of::AsOfReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(query::as_of::run(&state.store, &params).await?))
}

async fn history(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::history::HistoryParams>, QueryRejection>,
) -> Result<Json<query::history::HistoryReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(query::history::run(&state.store, &params).await?))
}

async fn pipeline_diff(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::pipeline_diff::PipelineDiffParams>, QueryRejection>,
) -> Result<Json<query::pipeline_diff::PipelineDiffReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(
        query::pipeline_diff::run(&state.store, &params).await?,
    ))
}

async fn funnel(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::funnel::FunnelParams>, QueryRejection>,
) -> Result<Json<query::funnel::FunnelReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(
        query::funnel::run(&state.store, &state.settings, &params).await?,
    ))
}

async fn cohort(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::cohort::CohortParams>, QueryRejection>,
) -> Result<Json<query::cohort::CohortReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(query::cohort::run(&state.store, &params).await?))
}

async fn recycled(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::recycled::RecycledParams>, QueryRejection>,
) -> Result<Json<query::recycled::RecycledReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(query::recycled::run(&state.store, &params).await?))
}

async fn campaigns(
    State(state): State<Arc<ApiState>>,
    params: Result<Query<query::campaigns::CampaignsParams>, QueryRejection>,
) -> Result<Json<query::campaigns::CampaignsReport>, ApiError> {
    let params = parameters(params)?;
    Ok(Json(query::campaigns::run(&state.store, &params).await?))
}

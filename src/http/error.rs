//! The one place errors become HTTP responses: `{"error":{"code","message","details"}}` with the
//! status the contract gives. Internal errors are logged here and never echoed to the client.

use crate::engine;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    /// 400 with `details.path` naming the offending field.
    pub fn bad_request(code: &'static str, path: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            details: json!({"path": path}),
            ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    /// 422 with `details.path`.
    pub fn invalid(path: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            details: json!({"path": path}),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
        }
    }

    /// 500; the cause is logged, the client sees only that something went wrong.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        super::server::log_line(format_args!("internal error: {cause}"));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// The writer thread is gone: nothing can be written any more.
    pub fn writer_stopped() -> ApiError {
        ApiError::internal("the writer thread has stopped")
    }

    /// 401 `unauthenticated`; answered with `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn busy() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the writer queue is full; retry shortly",
        )
    }
}

impl From<engine::Error> for ApiError {
    fn from(e: engine::Error) -> ApiError {
        use engine::Error as E;
        let message = e.to_string();
        match e {
            E::BadRequest { code, path, .. } => ApiError {
                details: path.map_or_else(|| json!({}), |p| json!({"path": p})),
                ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
            },
            E::Forbidden { code, .. } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            E::NotFound { code, .. } => ApiError::new(StatusCode::NOT_FOUND, code, message),
            E::Conflict { code, details, .. } => ApiError {
                details,
                ..ApiError::new(StatusCode::CONFLICT, code, message)
            },
            E::Invalid { code, path, .. } => ApiError {
                details: json!({"path": path}),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            },
            E::Store(e) => ApiError::internal(e),
            E::Canonical(e) => ApiError::internal(e),
            E::Signing(e) => ApiError::internal(e),
        }
    }
}

impl ApiError {
    /// The error body as the client receives it.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "details": self.details}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fedcore\""),
            );
        }
        response
    }
}

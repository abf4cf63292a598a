//! DSM reply envelopes and error codes.
//!
//! Every API answer is HTTP 200 with `{"success":true,"data":…}` or
//! `{"success":false,"error":{"code":N,"errors":[…]}}`, as DSM does.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// DSM error codes the emulator answers with (names follow DSM_API.md).
pub(crate) mod code {
    pub const UNKNOWN: i32 = 100;
    pub const NO_API_METHOD_VERSION: i32 = 101;
    pub const NO_SUCH_API: i32 = 102;
    pub const NO_SUCH_METHOD: i32 = 103;
    pub const BAD_VERSION: i32 = 104;
    pub const SESSION_TIMEOUT: i32 = 106;
    pub const MISSING_PARAMS: i32 = 114;
    pub const INVALID_SESSION: i32 = 119;
    pub const BAD_ACCOUNT: i32 = 400;
    pub const OTP_REQUIRED: i32 = 403;
    pub const OTP_WRONG: i32 = 404;
    pub const IP_BLOCKED: i32 = 407;
    pub const INVALID_PARAM: i32 = 400;
    pub const NOT_PERMITTED: i32 = 407;
    pub const NOT_FOUND: i32 = 408;
    pub const NAME_TOO_LONG: i32 = 412;
    pub const EXISTS: i32 = 414;
    pub const IO: i32 = 417;
    pub const ILLEGAL_PATH: i32 = 418;
    pub const ILLEGAL_NAME: i32 = 419;
    pub const NO_SUCH_TASK: i32 = 599;
    pub const DELETE_FAILED: i32 = 900;
    pub const CREATE_FAILED: i32 = 1100;
    pub const RENAME_FAILED: i32 = 1200;
    pub const UPLOAD_LENGTH: i32 = 1800;
    pub const UPLOAD_NO_FILENAME: i32 = 1802;
    pub const UPLOAD_CANCELLED: i32 = 1803;
    pub const UPLOAD_EXISTS: i32 = 1805;
}

/// A DSM failure answer: a code and, for batch calls, one entry per path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fail {
    pub code: i32,
    pub errors: Vec<Value>,
}

impl Fail {
    /// A failure with just a code.
    pub fn new(code: i32) -> Self {
        Self {
            code,
            errors: Vec::new(),
        }
    }

    /// A batch failure (`900`, `1100`, `1200`…) listing the per-path codes.
    pub fn with_errors(code: i32, errors: Vec<Value>) -> Self {
        Self { code, errors }
    }
}

/// Per-path error entry as DSM puts it in `error.errors`.
pub(crate) fn path_error(code: i32, path: &str) -> Value {
    json!({ "code": code, "path": path })
}

/// The result of one API call: `Some(data)`, or `None` for a bare success.
pub(crate) type ApiResult = Result<Option<Value>, Fail>;

/// The JSON body of an API result.
pub(crate) fn envelope(result: &ApiResult) -> Value {
    match result {
        Ok(Some(data)) => json!({ "data": data, "success": true }),
        Ok(None) => json!({ "success": true }),
        Err(fail) if fail.errors.is_empty() => {
            json!({ "error": { "code": fail.code }, "success": false })
        }
        Err(fail) => json!({
            "error": { "code": fail.code, "errors": fail.errors },
            "success": false
        }),
    }
}

/// An HTTP 200 JSON response, as DSM sends it.
pub(crate) fn json_response(body: &Value) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A plain HTTP error page, as the NAS's nginx front-end sends it.
pub(crate) fn http_error(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        code = status.as_u16()
    );
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_match_dsm_shapes() {
        assert_eq!(
            envelope(&Ok(Some(json!({"a": 1})))),
            json!({"data": {"a": 1}, "success": true})
        );
        assert_eq!(envelope(&Ok(None)), json!({"success": true}));
        assert_eq!(
            envelope(&Err(Fail::new(119))),
            json!({"error": {"code": 119}, "success": false})
        );
        assert_eq!(
            envelope(&Err(Fail::with_errors(900, vec![path_error(408, "/x")]))),
            json!({"error": {"code": 900, "errors": [{"code": 408, "path": "/x"}]}, "success": false})
        );
    }
}

//! `wasi:http/types.http-error-code` for errors that end a response body.
//!
//! wasmtime-wasi-http 48 hands a body's failure to the guest as an I/O
//! error holding its own `Error` type, which its `http-error-code` does not
//! recognise (it looks for the WIT `error-code` only), so a handler would
//! see an untyped error when a body passes `http.max_response_bytes`,
//! stalls or breaks off. The node defines `http-error-code` itself (linked
//! over wasmtime-wasi-http's), answering for both types.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::io::error::Error as IoError;
use wasmtime_wasi_http::Error as HttpError;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use crate::sandbox::state::JobState;

/// The `wasi:http` version wasmtime-wasi-http links (guests of any 0.2.x
/// are matched to it).
const TYPES: &str = "wasi:http/types@0.2.12";

/// Link our `http-error-code` over wasmtime-wasi-http's.
pub(super) fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(TYPES)?.func_wrap(
        "http-error-code",
        |store: wasmtime::StoreContextMut<'_, JobState>, (error,): (Resource<IoError>,)| {
            let error = store.data().table.get(&error)?;
            Ok((error_code(error),))
        },
    );
    linker.allow_shadowing(false);
    defined
}

/// The WIT error code of an I/O error from a `wasi:http` body, if it is one.
fn error_code(error: &wasmtime::Error) -> Option<ErrorCode> {
    if let Some(code) = error.downcast_ref::<ErrorCode>() {
        return Some(code.clone());
    }
    let code = match error.downcast_ref::<HttpError>()? {
        HttpError::HttpResponseBodySize(limit) => ErrorCode::HttpResponseBodySize(*limit),
        HttpError::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        HttpError::HttpResponseTimeout => ErrorCode::HttpResponseTimeout,
        HttpError::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        HttpError::ConnectionTerminated => ErrorCode::ConnectionTerminated,
        HttpError::HttpProtocolError => ErrorCode::HttpProtocolError,
        HttpError::Hyper(err) if err.is_timeout() => ErrorCode::ConnectionReadTimeout,
        // A body that ends before its length, or a connection reset.
        HttpError::Hyper(_) => ErrorCode::ConnectionTerminated,
        other => ErrorCode::InternalError(Some(other.to_string())),
    };
    Some(code)
}

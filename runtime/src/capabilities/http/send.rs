//! Sending one handler request: check the destination against
//! `http.allowed_hosts`, open a checked connection, speak HTTP/1.1 over it
//! and hand back the response with its body capped.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::body::CappedBody;
use super::connect::{self, Destination};
use super::{HttpAccess, HttpRules, IoFuture, JobContext, MAX_CONNECTIONS_PER_JOB, MAX_HEADER_BYTES};

/// Send `request` under `rules`, or refuse it.
pub(super) async fn send(
    job: &JobContext,
    rules: &HttpRules,
    access: &HttpAccess,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let destination = Destination::of(request.uri())?;
    if !rules
        .egress
        .allows_host(destination.scheme, &destination.host, destination.port)
    {
        return Err(job.refuse(
            &destination.to_string(),
            "not in http.allowed_hosts",
            HttpError::HttpRequestDenied,
        ));
    }
    let connection_slot = Arc::clone(&job.connections).try_acquire_owned().map_err(|_| {
        let reason =
            format!("the job already holds {MAX_CONNECTIONS_PER_JOB} connections (finish or drop a response first)");
        job.refuse(&destination.to_string(), &reason, HttpError::ConnectionLimitReached)
    })?;
    // A handler's own timeouts can only shorten the tenant's.
    let timeout = |asked: Option<Duration>| asked.map_or(rules.timeout, |asked| asked.min(rules.timeout));
    let connect_timeout = timeout(options.and_then(|options| options.connect_timeout));
    let first_byte_timeout = timeout(options.and_then(|options| options.first_byte_timeout));
    let between_bytes_timeout = timeout(options.and_then(|options| options.between_bytes_timeout));

    let stream = connect::open(job, &destination, &rules.egress, connect_timeout, || access.tls()).await?;
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // hyper sends a GET or HEAD with a body of unknown length as
    // `content-length: 0` and drops the body, racing a handler that still
    // writes (or finishes) it. Send none, and drain the handler's.
    let unsent_body = if matches!(*request.method(), http::Method::GET | http::Method::HEAD)
        && !request.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Some(std::mem::replace(request.body_mut(), empty))
    } else {
        None
    };
    // Origin form on the wire; the Host header keeps the name.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(request.uri().path_and_query().map_or("/", |path| path.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    tracing::debug!(job_id = %job.job_id, destination = %destination, method = %request.method(), "http request");

    // Wait for the response head while driving the connection.
    let response = pin!(async {
        tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(response_error)
    });
    let mut response = response;
    let mut connection = Some(connection);
    let response = poll_fn(|cx| match response.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(driving) = connection.as_mut() else {
                return Poll::Pending;
            };
            let ended = ready!(Pin::new(driving).poll(cx));
            connection = None;
            match ended {
                Ok(()) => response.as_mut().poll(cx),
                Err(err) => Poll::Ready(Err(response_error(err))),
            }
        }
    })
    .await?;

    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared
        && length > rules.max_response_bytes
    {
        let reason = format!(
            "the response has {length} bytes, more than http.max_response_bytes ({})",
            rules.max_response_bytes
        );
        return Err(job.refuse(
            &destination.to_string(),
            &reason,
            HttpError::HttpResponseBodySize(Some(length)),
        ));
    }
    let response =
        response.map(|body| CappedBody::new(body, rules.max_response_bytes, between_bytes_timeout).boxed_unsync());
    let drive: IoFuture = Box::new(async move {
        let drain = async {
            if let Some(mut body) = unsent_body {
                while let Some(Ok(_)) = body.frame().await {}
            }
        };
        let drive = async {
            match connection {
                Some(connection) => connection.await.map_err(HttpError::from),
                None => Ok(()),
            }
        };
        let ended = tokio::join!(drive, drain).0;
        drop(connection_slot);
        ended
    });
    Ok((response, drive))
}

/// A failure before the response head: the connection's end (closed or
/// reset early) is `connection-terminated`, which a handler may retry.
fn response_error(err: hyper::Error) -> HttpError {
    if err.is_timeout() {
        HttpError::ConnectionReadTimeout
    } else if err.is_incomplete_message()
        || err.is_closed()
        || std::error::Error::source(&err).is_some_and(|source| source.is::<std::io::Error>())
    {
        HttpError::ConnectionTerminated
    } else {
        HttpError::from(err)
    }
}

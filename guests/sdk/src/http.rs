//! Outbound HTTP for handlers through `wasi:http` (capability `http`),
//! blocking and small: send a request, read the status and headers, read
//! the body in pieces. The node decides where a request may go; its
//! refusals come back as [`HttpFailure`]s whose [`HttpFailure::code`] is
//! the `wasi:http` error (`HTTP-request-denied`, `destination-IP-prohibited`,
//! `HTTP-response-body-size` …). Redirects are not followed here: a handler
//! that wants the next location asks for it ([`resolve`]).

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::HandlerError;

/// A request that failed, with the `wasi:http` error when there is one.
#[derive(Debug, Clone)]
pub struct HttpFailure {
    /// The typed error, when the failure is one.
    pub code: Option<ErrorCode>,
    /// What failed, for people.
    pub message: String,
}

impl HttpFailure {
    fn new(message: impl Into<String>) -> HttpFailure {
        HttpFailure {
            code: None,
            message: message.into(),
        }
    }

    fn code(code: ErrorCode, url: &str) -> HttpFailure {
        HttpFailure {
            message: format!("{url}: {code:?}"),
            code: Some(code),
        }
    }

    /// Whether the node's egress policy refused the request.
    pub fn is_denied(&self) -> bool {
        matches!(
            self.code,
            Some(ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited)
        )
    }

    /// Whether the failure is the network's or the server's availability
    /// (refused, reset, timed out): trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code,
            Some(
                ErrorCode::DnsTimeout
                    | ErrorCode::DestinationUnavailable
                    | ErrorCode::ConnectionRefused
                    | ErrorCode::ConnectionTerminated
                    | ErrorCode::ConnectionTimeout
                    | ErrorCode::ConnectionReadTimeout
                    | ErrorCode::ConnectionWriteTimeout
                    | ErrorCode::ConnectionLimitReached
                    | ErrorCode::HttpResponseIncomplete
                    | ErrorCode::HttpResponseTimeout
            )
        )
    }

    /// The handler error a job reports for this failure: `denied` for the
    /// policy's refusals, `unavailable` for transient ones, `failed` for
    /// the rest.
    pub fn into_handler_error(self) -> HandlerError {
        if self.is_denied() {
            HandlerError::Denied(self.message)
        } else if self.is_transient() {
            HandlerError::Unavailable(self.message)
        } else {
            HandlerError::Failed(self.message)
        }
    }
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The parts of an absolute `http(s)` URL a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// `/path?query` (fragment dropped).
    pub path_and_query: String,
}

impl Url {
    /// Split an absolute URL.
    pub fn parse(url: &str) -> Result<Url, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute http(s) URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("{url:?}: only http and https URLs can be fetched"));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let path_and_query = match path {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path_and_query)
    }
}

/// Where a `Location` header points, relative to the URL that answered.
pub fn resolve(base: &Url, location: &str) -> Result<Url, String> {
    if location.contains("://") {
        return Url::parse(location);
    }
    if let Some(rest) = location.strip_prefix("//") {
        return Url::parse(&format!("{}://{rest}", base.scheme));
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let directory = base.path_and_query.split('?').next().unwrap_or("/");
        let directory = &directory[..=directory.rfind('/').unwrap_or(0)];
        format!("{directory}{location}")
    };
    Ok(Url {
        path_and_query: path,
        ..base.clone()
    })
}

/// A response whose body has not been read yet.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-case, values as text.
    pub headers: Vec<(String, String)>,
    url: String,
    // Dropped in this order: the stream belongs to the body, the body to
    // the response.
    stream: Option<InputStream>,
    _body: Option<IncomingBody>,
    _response: IncomingResponse,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `Content-Length`, when the server sent one.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// The next piece of the body (up to `max` bytes), `None` at its end.
    pub fn read(&mut self, max: u64) -> Result<Option<Vec<u8>>, HttpFailure> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.blocking_read(max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => {
                self.stream = None;
                Ok(None)
            }
            Err(StreamError::LastOperationFailed(error)) => {
                let code = wasip2::http::types::http_error_code(&error);
                let message = match &code {
                    Some(code) => format!("{}: reading the body: {code:?}", self.url),
                    // The first line: the rest may be a host backtrace.
                    None => format!(
                        "{}: reading the body: {}",
                        self.url,
                        error.to_debug_string().lines().next().unwrap_or_default()
                    ),
                };
                Err(HttpFailure { code, message })
            }
        }
    }

    /// The whole body, failing once it passes `limit` bytes.
    pub fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, HttpFailure> {
        let mut body = Vec::new();
        while let Some(piece) = self.read(64 * 1024)? {
            body.extend_from_slice(&piece);
            if body.len() > limit {
                return Err(HttpFailure::new(format!(
                    "{}: body larger than {limit} bytes",
                    self.url
                )));
            }
        }
        Ok(body)
    }
}

/// Send one request and wait for the response head.
pub fn send(method: &str, url: &Url, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Response, HttpFailure> {
    let shown = url.to_string();
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&fields).map_err(|err| HttpFailure::new(format!("{shown}: header: {err:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let scheme = if url.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let invalid = |what: &str| HttpFailure::new(format!("{shown}: invalid {what}"));
    request.set_method(&method).map_err(|()| invalid("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(&url.authority))
        .map_err(|()| invalid("host"))?;
    request
        .set_path_with_query(Some(&url.path_and_query))
        .map_err(|()| invalid("path"))?;
    let outgoing = request.body().map_err(|()| invalid("body"))?;
    let waiting =
        outgoing_handler::handle(request, None::<RequestOptions>).map_err(|code| HttpFailure::code(code, &shown))?;
    {
        let stream = outgoing.write().map_err(|()| invalid("body"))?;
        for piece in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|err| HttpFailure::new(format!("{shown}: sending the body: {err:?}")))?;
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|code| HttpFailure::code(code, &shown))?;
    waiting.subscribe().block();
    let response = match waiting.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(HttpFailure::code(code, &shown)),
        Some(Err(())) | None => return Err(HttpFailure::new(format!("{shown}: no response"))),
    };
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let status = response.status();
    let body = response.consume().map_err(|()| invalid("response body"))?;
    let stream = body.stream().map_err(|()| invalid("response body"))?;
    Ok(Response {
        status,
        headers,
        url: shown,
        stream: Some(stream),
        _body: Some(body),
        _response: response,
    })
}

//! Capability `http`: `wasi:http/outgoing-handler` for handlers, with every
//! connection made by the node itself under the tenant's egress rules
//! (`[tenants.x.http]`, `crate::capabilities::http::egress`).
//!
//! wasmtime-wasi-http parses the guest's request; [`EgressHooks`] decides
//! and sends it: the destination must match `http.allowed_hosts`, the name
//! is resolved once and every address it resolves to must pass the address
//! rules (so a name cannot be pointed at loopback, the private network or
//! the metadata service), and the connection goes to an address that was
//! checked. Redirects are not followed: a handler that wants the next
//! location asks for it, and that request is checked like any other. The
//! response body is capped in bytes and in time. A refusal is the typed
//! `wasi:http` error (`HTTP-request-denied`, `destination-IP-prohibited`,
//! `HTTP-response-body-size`), logged by the node and in the job's log with
//! the reason and the policy key that would change it.

mod body;
mod connect;
pub mod egress;
mod error_code;
pub mod policy;
mod send;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use crate::capabilities::Capability;
use crate::capabilities::grant::Grant;
use crate::capabilities::http::egress::Egress;
use crate::policy::HttpPolicy;
use crate::sandbox::joblog::{JobLog, Level, LogRecord, Source};
use crate::sandbox::state::JobState;

/// Largest response header section a handler may receive, bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Connections one job may hold open at once (each response whose body is
/// not finished holds one): a handler cannot exhaust the node's sockets.
pub const MAX_CONNECTIONS_PER_JOB: usize = 8;

/// The node's side of capability `http`, shared by every job: the TLS
/// client settings (the platform's trust store), built on first use.
#[derive(Debug, Default)]
pub struct HttpAccess {
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl HttpAccess {
    /// TLS client settings verifying servers against the system's trust
    /// store, with the `ring` provider.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| {
                use rustls_platform_verifier::BuilderVerifierExt;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|err| err.to_string())?
                    .with_platform_verifier()
                    .map(|builder| Arc::new(builder.with_no_client_auth()))
                    .map_err(|err| format!("cannot load the system's TLS trust store: {err}"))
            })
            .clone()
    }
}

/// One tenant's rules for a job, from its policy (compiled when the policy
/// was read).
#[derive(Debug)]
pub(crate) struct HttpRules {
    egress: Arc<Egress>,
    max_response_bytes: u64,
    timeout: Duration,
}

impl HttpRules {
    fn from_policy(policy: &HttpPolicy) -> HttpRules {
        HttpRules {
            egress: policy.egress(),
            max_response_bytes: policy.max_response_bytes,
            timeout: Duration::from_millis(policy.timeout_ms.max(1)),
        }
    }
}

/// One job's `wasi:http` state: wasmtime-wasi-http's context and the
/// node's hooks.
pub(crate) struct JobHttp {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: EgressHooks,
}

impl JobHttp {
    /// The job's HTTP state under its grant (made on the job's first HTTP
    /// call, which only a job granted `http` can make).
    pub(crate) fn new(job_id: Arc<str>, grant: &Grant, log: JobLog, access: Arc<HttpAccess>) -> JobHttp {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(MAX_HEADER_BYTES);
        let rules = grant
            .capabilities()
            .contains(Capability::Http)
            .then(|| Arc::new(HttpRules::from_policy(&grant.policy().http)));
        JobHttp {
            ctx,
            hooks: EgressHooks {
                job: Arc::new(JobContext {
                    job_id,
                    tenant: grant.tenant().to_string(),
                    log,
                    connections: Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_JOB)),
                }),
                rules,
                access,
            },
        }
    }
}

/// Who is asking, for refusal messages.
#[derive(Debug)]
struct JobContext {
    job_id: Arc<str>,
    tenant: String,
    log: JobLog,
    connections: Arc<Semaphore>,
}

impl JobContext {
    /// Log a refused request (node log at WARN, job log) and return the
    /// error the guest sees.
    fn refuse(&self, destination: &str, reason: &str, error: HttpError) -> HttpError {
        tracing::warn!(job_id = %self.job_id, tenant = %self.tenant, destination, reason, "http request refused");
        self.log.push(LogRecord {
            level: Level::Warn,
            source: Source::Node,
            message: format!("http: request to {destination} refused: {reason}"),
            fields: Vec::new(),
        });
        error
    }
}

/// The node's `wasi:http` hooks for one job.
pub(crate) struct EgressHooks {
    job: Arc<JobContext>,
    rules: Option<Arc<HttpRules>>,
    access: Arc<HttpAccess>,
}

/// The future that drives a connection after the response head arrived.
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        let job = Arc::clone(&self.job);
        let rules = self.rules.clone();
        let access = Arc::clone(&self.access);
        let span = tracing::debug_span!("cap.http.send-request", uri = %request.uri());
        Box::new(tracing::Instrument::instrument(
            async move {
                let Some(rules) = rules else {
                    let destination = request.uri().to_string();
                    return Err(job.refuse(
                        &destination,
                        "capability http is not granted",
                        HttpError::HttpRequestDenied,
                    ));
                };
                send::send(&job, &rules, &access, request, options).await
            },
            span,
        ))
    }
}

/// Add `wasi:http` to a job's linker (only when `http` is granted).
pub(crate) fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    error_code::add_to_linker(linker)
}

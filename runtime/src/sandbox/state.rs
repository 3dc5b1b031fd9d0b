//! The per-job store data: everything a job's host calls can touch. One
//! `JobState` per `Store`, one `Store` per job, dropped when the job ends
//! (which is also how a job is cancelled).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::capabilities::docker::DockerAccess;
use crate::capabilities::grant::Grant;
use crate::capabilities::http::{HttpAccess, JobHttp};
use crate::capabilities::inference::Engines;
use crate::capabilities::models::ModelStore;
use crate::sandbox::joblog::JobLog;
use crate::sandbox::limits::StoreLimiter;
use crate::sandbox::output::{OutputBudget, StreamState};

/// One job's host-side state.
pub struct JobState {
    /// The job's id, for logs.
    pub(crate) job_id: Arc<str>,
    /// What the tenant may use; every gated call checks it.
    pub(crate) grant: Grant,
    /// Memory/table limits.
    pub(crate) limiter: StoreLimiter,
    /// The job's log.
    pub(crate) log: JobLog,
    /// Output bytes left (chunks and result).
    pub(crate) output: OutputBudget,
    /// Where chunks go, their numbering and pacing.
    pub(crate) stream: StreamState,
    /// The node's inference engines.
    pub(crate) engines: Arc<Engines>,
    /// The node's Docker Engine API.
    pub(crate) docker: Arc<DockerAccess>,
    /// The node's models directory, if it has one.
    pub(crate) models: Option<Arc<ModelStore>>,
    /// Resources handed to the guest (WASI's and citadel's).
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    /// The node's side of capability `http`.
    http_access: Arc<HttpAccess>,
    /// The job's `wasi:http` state, made on the first HTTP call.
    http: Option<JobHttp>,
}

impl JobState {
    /// Assemble a job's state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        job_id: Arc<str>,
        grant: Grant,
        limiter: StoreLimiter,
        log: JobLog,
        output: OutputBudget,
        stream: StreamState,
        engines: Arc<Engines>,
        docker: Arc<DockerAccess>,
        models: Option<Arc<ModelStore>>,
        wasi: WasiCtx,
        http_access: Arc<HttpAccess>,
    ) -> JobState {
        JobState {
            job_id,
            grant,
            limiter,
            log,
            output,
            stream,
            engines,
            docker,
            models,
            wasi,
            http_access,
            http: None,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for JobState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let http = self.http.get_or_insert_with(|| {
            JobHttp::new(
                Arc::clone(&self.job_id),
                &self.grant,
                self.log.clone(),
                Arc::clone(&self.http_access),
            )
        });
        WasiHttpCtxView {
            ctx: &mut http.ctx,
            table: &mut self.table,
            hooks: &mut http.hooks,
        }
    }
}

//! The per-job store data: everything a job's host calls can touch. One
//! `JobState` per `Store`, one `Store` per job, dropped when the job ends
//! (which is also how a job is cancelled).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use tokio::sync::mpsc;

use crate::capabilities::NodeResources;
use crate::capabilities::grant::Grant;
use crate::capabilities::http::JobHttp;
use crate::job::Chunk;
use crate::sandbox::joblog::JobLog;
use crate::sandbox::limits::{JobLimits, StoreLimiter};
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
    /// The node-side resource of each capability.
    pub(crate) node: NodeResources,
    /// Resources handed to the guest (WASI's and citadel's).
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    /// The job's `wasi:http` state, made on the first HTTP call.
    http: Option<JobHttp>,
}

impl JobState {
    /// A job's state under `limits`: its chunks to `chunks` (when someone
    /// listens), its host calls reaching the node through `node`.
    pub(crate) fn new(
        job_id: Arc<str>,
        grant: Grant,
        limits: &JobLimits,
        log: JobLog,
        chunks: Option<mpsc::Sender<Chunk>>,
        node: NodeResources,
        wasi: WasiCtx,
    ) -> JobState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resource_handles);
        JobState {
            job_id,
            grant,
            limiter: StoreLimiter::new(limits.memory_bytes),
            log,
            output: OutputBudget::new(limits.max_output_bytes),
            stream: StreamState::new(chunks, limits.max_chunk_bytes, limits.max_chunks_per_second),
            node,
            wasi,
            http: None,
            table,
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
                Arc::clone(&self.node.http),
            )
        });
        WasiHttpCtxView {
            ctx: &mut http.ctx,
            table: &mut self.table,
            hooks: &mut http.hooks,
        }
    }
}

//! The store data: everything a job's host calls can touch. One `JobState`
//! per `Store`; a store serves one job at a time, and its per-job parts
//! (id, grant, log, output budget, chunk sink, HTTP state) are replaced
//! when a kept instance takes its next job (`warm.rs`). A store is dropped
//! when a job ends any other way than by returning (which is also how a job
//! is cancelled).

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

    /// Make this (kept) store's state the next job's: its id, grant,
    /// limits, log, chunk sink and node resources; nothing of the previous
    /// job's host-side state remains.
    pub(crate) fn begin_job(
        &mut self,
        job_id: Arc<str>,
        grant: Grant,
        limits: &JobLimits,
        log: JobLog,
        chunks: Option<mpsc::Sender<Chunk>>,
        node: NodeResources,
    ) {
        self.job_id = job_id;
        self.grant = grant;
        self.limiter.begin_job(limits.memory_bytes);
        self.log = log;
        self.output = OutputBudget::new(limits.max_output_bytes);
        self.stream = StreamState::new(chunks, limits.max_chunk_bytes, limits.max_chunks_per_second);
        self.node = node;
        self.http = None;
        self.table.set_max_capacity(limits.max_resource_handles);
    }

    /// The job is over: let go of what belongs to it alone (its chunk sink,
    /// whose receiver waits for it to close; its HTTP state).
    pub(crate) fn end_job(&mut self) {
        self.stream.close();
        self.http = None;
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

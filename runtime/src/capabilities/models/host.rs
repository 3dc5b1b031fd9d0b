//! Capability `models`: the node's models directory (`crate::capabilities::models`) for
//! the handlers of tenants granted it. File work runs on tokio's blocking
//! threads; a write that would pass the cap is refused before it happens.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::citadel::handler::models::{Host, HostDownload, ModelsError, Stored as WitStored};
use crate::capabilities::Capability;
use crate::capabilities::models::{ModelError, ModelStore, ModelWrite, Stored};
use crate::sandbox::state::JobState;

/// The `download` resource: a write in progress. `None` while a blocking
/// task holds it.
pub struct ActiveDownload(Option<ModelWrite>);

fn wit_error(err: ModelError) -> ModelsError {
    match err {
        ModelError::Invalid(message) => ModelsError::Invalid(message),
        ModelError::NoSpace(free) => ModelsError::NoSpace(free),
        ModelError::HashMismatch(actual) => ModelsError::HashMismatch(actual),
        ModelError::Busy(name) => ModelsError::Busy(name),
        ModelError::Io(message) => ModelsError::Io(message),
    }
}

fn wit_stored(stored: Stored) -> WitStored {
    WitStored {
        name: stored.name,
        sha256: stored.sha256,
        bytes: stored.bytes,
    }
}

/// Run `work` on the download off the async threads, then put it back.
async fn on_download<T: Send + 'static>(
    state: &mut JobState,
    download: &Resource<ActiveDownload>,
    work: impl FnOnce(&mut ModelWrite) -> Result<T, ModelError> + Send + 'static,
) -> wasmtime::Result<Result<T, ModelsError>> {
    let active = state.table.get_mut(download)?;
    let Some(mut write) = active.0.take() else {
        return Ok(Err(ModelsError::Io(
            "the download is unusable after an earlier failure".into(),
        )));
    };
    let (write, result) = tokio::task::spawn_blocking(move || {
        let result = work(&mut write);
        (write, result)
    })
    .await?;
    state.table.get_mut(download)?.0 = Some(write);
    Ok(result.map_err(wit_error))
}

impl Host for JobState {
    #[tracing::instrument(name = "cap.models.begin", level = "debug", skip_all)]
    async fn begin(
        &mut self,
        name: String,
        sha256: String,
        size: Option<u64>,
    ) -> wasmtime::Result<Result<Resource<ActiveDownload>, ModelsError>> {
        if let Err(denied) = self.grant.check(Capability::Models, &self.job_id) {
            return Ok(Err(ModelsError::Denied(denied.to_string())));
        }
        let Some(store) = self.node.models.clone() else {
            return Ok(Err(ModelsError::Io("this node has no models directory".into())));
        };
        let begun = tokio::task::spawn_blocking(move || ModelStore::begin(&store, &name, &sha256, size)).await?;
        match begun {
            Ok(write) => {
                tracing::info!(job_id = %self.job_id, model = %write.name(), offset = write.offset(), "model download started");
                Ok(Ok(self.table.push(ActiveDownload(Some(write)))?))
            }
            Err(err) => Ok(Err(wit_error(err))),
        }
    }
}

impl HostDownload for JobState {
    #[tracing::instrument(name = "cap.models.offset", level = "debug", skip_all)]
    async fn offset(&mut self, download: Resource<ActiveDownload>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&download)?.0.as_ref().map_or(0, ModelWrite::offset))
    }

    #[tracing::instrument(name = "cap.models.write", level = "debug", skip_all)]
    async fn write(
        &mut self,
        download: Resource<ActiveDownload>,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ModelsError>> {
        on_download(self, &download, move |write| write.write(&bytes)).await
    }

    #[tracing::instrument(name = "cap.models.restart", level = "debug", skip_all)]
    async fn restart(&mut self, download: Resource<ActiveDownload>) -> wasmtime::Result<Result<(), ModelsError>> {
        on_download(self, &download, ModelWrite::restart).await
    }

    #[tracing::instrument(name = "cap.models.finish", level = "debug", skip_all)]
    async fn finish(&mut self, download: Resource<ActiveDownload>) -> wasmtime::Result<Result<WitStored, ModelsError>> {
        let job_id = Arc::clone(&self.job_id);
        let finished = on_download(self, &download, ModelWrite::finish).await?;
        match &finished {
            Ok(stored) => {
                tracing::info!(%job_id, model = %stored.name, bytes = stored.bytes, sha256 = %stored.sha256, "model stored")
            }
            Err(err) => tracing::warn!(%job_id, error = ?err, "model not stored"),
        }
        Ok(finished.map(wit_stored))
    }

    async fn drop(&mut self, download: Resource<ActiveDownload>) -> wasmtime::Result<()> {
        self.table.delete(download)?;
        Ok(())
    }
}

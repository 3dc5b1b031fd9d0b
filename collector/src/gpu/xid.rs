//! GPU XID errors as NVML reports them (critical XID events: a GPU fell
//! off the bus, a double-bit ECC error, a kernel's illegal access…): one
//! thread waits on an NVML event set registered on every GPU that supports
//! it and hands each error on. Without NVML (no driver, or built without
//! the `nvml` feature) there is nothing to watch, and [`watch`] says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// One XID error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidError {
    /// The GPU's index.
    pub index: u32,
    /// The GPU's UUID.
    pub uuid: String,
    /// The XID (`None`: NVML did not say which).
    pub xid: Option<u64>,
}

/// Watch every GPU for XID errors until `stop` is set (checked every
/// second); errors arrive on the returned channel. Fails when NVML cannot
/// be loaded or no GPU supports the event.
#[cfg(feature = "nvml")]
pub fn watch(stop: Arc<AtomicBool>) -> Result<mpsc::Receiver<XidError>, String> {
    use nvml_wrapper::Nvml;
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError as NvmlXid;
    use nvml_wrapper::error::NvmlError;

    let (errors, received) = mpsc::channel();
    let (ready, started) = mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("citadel-gpu-xid".into())
        .spawn(move || {
            let nvml = match Nvml::init() {
                Ok(nvml) => nvml,
                Err(err) => {
                    let _ = ready.send(Err(format!("NVML: {err}")));
                    return;
                }
            };
            let mut set = match nvml.create_event_set() {
                Ok(set) => set,
                Err(err) => {
                    let _ = ready.send(Err(format!("NVML event set: {err}")));
                    return;
                }
            };
            let mut watched = 0;
            for index in 0..nvml.device_count().unwrap_or(0) {
                let Ok(device) = nvml.device_by_index(index) else {
                    continue;
                };
                let supported = device.supported_event_types().unwrap_or(EventTypes::empty());
                if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
                    continue;
                }
                set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(set) => {
                        watched += 1;
                        set
                    }
                    // The set was released by the failure: start a new one.
                    Err(err) => {
                        tracing::warn!(gpu = index, error = %err.error, "cannot watch this GPU for XID errors");
                        match nvml.create_event_set() {
                            Ok(set) => set,
                            Err(_) => return,
                        }
                    }
                };
            }
            if watched == 0 {
                let _ = ready.send(Err("no GPU supports XID events".into()));
                return;
            }
            let _ = ready.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                match set.wait(1000) {
                    Ok(event) => {
                        let error = XidError {
                            index: event.device.index().unwrap_or(u32::MAX),
                            uuid: event.device.uuid().unwrap_or_default(),
                            xid: match event.event_data {
                                Some(NvmlXid::Value(xid)) => Some(xid),
                                _ => None,
                            },
                        };
                        if errors.send(error).is_err() {
                            break;
                        }
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "waiting for GPU XID events failed; retrying in a second");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            }
            let _ = set.release_events();
        })
        .map_err(|err| format!("cannot start the XID watcher: {err}"))?;
    started
        .recv()
        .map_err(|_| "the XID watcher stopped at start".to_string())??;
    Ok(received)
}

/// Without NVML there are no XID events to watch.
#[cfg(not(feature = "nvml"))]
pub fn watch(_stop: Arc<AtomicBool>) -> Result<mpsc::Receiver<XidError>, String> {
    Err("built without NVML (feature `nvml`)".into())
}

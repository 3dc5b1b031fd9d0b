//! The node's Prometheus metrics (`prometheus-client`), served at
//! `/metrics`: job counters and latency histograms, node and collector
//! gauges, status-publishing failures, and GPU gauges named after
//! dcgm-exporter's (`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_DEV_FB_USED`, …) so
//! existing dashboards work unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use citadel_collector::Snapshot;
use citadel_transports::status::HttpPublisherStats;

use crate::capabilities::inference::GenerationRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeOnly {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InferenceLabels {
    tenant: String,
    engine: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    tenant: String,
    engine: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// dcgm-exporter's label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
struct GpuLabels {
    gpu: String,
    UUID: String,
    modelName: String,
    Hostname: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchedLabels {
    name: String,
}

/// Every metric of the node.
pub struct Metrics {
    registry: Registry,
    jobs_started: Family<JobLabels, Counter>,
    jobs_finished: Family<OutcomeLabels, Counter>,
    job_duration: Family<JobLabels, Histogram>,
    first_chunk: Family<JobLabels, Histogram>,
    jobs_in_flight: Gauge,
    publish_failures: Family<SinkLabels, Counter>,
    collector_duration: Histogram,
    collector_errors: Gauge,
    cpu_percent: FloatGauge,
    memory_used: Gauge,
    memory_total: Gauge,
    gpu: Vec<(&'static str, Family<GpuLabels, FloatGauge>)>,
    watched_cpu: Family<WatchedLabels, FloatGauge>,
    watched_memory: Family<WatchedLabels, Gauge>,
    http_messages: Family<OutcomeOnly, Gauge>,
    http_queued: Gauge,
    http_spool_bytes: Gauge,
    inference_requests: Family<InferenceLabels, Counter>,
    inference_tokens: Family<TokenLabels, Counter>,
    inference_first_token: Family<EngineLabels, Histogram>,
}

/// The dcgm-exporter gauges exported per GPU.
const GPU_GAUGES: [(&str, &str); 8] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz)."),
];

fn histogram(min: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(min, 2.0, count))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs_started = Family::<JobLabels, Counter>::default();
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        let job_duration = Family::<JobLabels, Histogram>::new_with_constructor(|| histogram(0.000_5, 22));
        let first_chunk = Family::<JobLabels, Histogram>::new_with_constructor(|| histogram(0.000_1, 20));
        let jobs_in_flight = Gauge::default();
        let publish_failures = Family::<SinkLabels, Counter>::default();
        let collector_duration = histogram(0.000_1, 16);
        let collector_errors = Gauge::default();
        let cpu_percent = FloatGauge::default();
        let memory_used = Gauge::default();
        let memory_total = Gauge::default();
        let watched_cpu = Family::<WatchedLabels, FloatGauge>::default();
        let watched_memory = Family::<WatchedLabels, Gauge>::default();
        let http_messages = Family::<OutcomeOnly, Gauge>::default();
        let http_queued = Gauge::default();
        let http_spool_bytes = Gauge::default();
        let inference_requests = Family::<InferenceLabels, Counter>::default();
        let inference_tokens = Family::<TokenLabels, Counter>::default();
        let inference_first_token = Family::<EngineLabels, Histogram>::new_with_constructor(|| histogram(0.001, 16));
        registry.register("citadel_jobs_started", "Jobs started, by type", jobs_started.clone());
        registry.register(
            "citadel_jobs_finished",
            "Jobs finished, by type and outcome (ok or failure class)",
            jobs_finished.clone(),
        );
        registry.register(
            "citadel_job_duration_seconds",
            "Time from start to settlement, by type",
            job_duration.clone(),
        );
        registry.register(
            "citadel_job_first_chunk_seconds",
            "Time from start to the first chunk, by type",
            first_chunk.clone(),
        );
        registry.register(
            "citadel_jobs_in_flight",
            "Jobs held by the worker",
            jobs_in_flight.clone(),
        );
        registry.register(
            "citadel_status_publish_failures",
            "Failed status publications, by sink",
            publish_failures.clone(),
        );
        registry.register(
            "citadel_collector_duration_seconds",
            "Time to take a telemetry snapshot",
            collector_duration.clone(),
        );
        registry.register(
            "citadel_collector_errors",
            "Failing probes in the last snapshot",
            collector_errors.clone(),
        );
        registry.register(
            "citadel_node_cpu_percent",
            "Node CPU use, percent of all cores",
            cpu_percent.clone(),
        );
        registry.register(
            "citadel_node_memory_used_bytes",
            "Node memory in use",
            memory_used.clone(),
        );
        registry.register("citadel_node_memory_total_bytes", "Node memory", memory_total.clone());
        registry.register(
            "citadel_process_cpu_percent",
            "Managed process CPU use (its cgroup), percent of one core",
            watched_cpu.clone(),
        );
        registry.register(
            "citadel_process_memory_bytes",
            "Managed process memory (its cgroup)",
            watched_memory.clone(),
        );
        registry.register(
            "citadel_status_http_messages",
            "Status messages of the HTTP publisher so far, by outcome",
            http_messages.clone(),
        );
        registry.register(
            "citadel_status_http_queued",
            "Status messages queued in memory for HTTP",
            http_queued.clone(),
        );
        registry.register(
            "citadel_status_http_spool_bytes",
            "Bytes waiting in the status spool",
            http_spool_bytes.clone(),
        );
        registry.register(
            "citadel_inference_requests",
            "Generations on inference engines, by tenant, engine and outcome",
            inference_requests.clone(),
        );
        registry.register(
            "citadel_inference_tokens",
            "Tokens metered per tenant and engine (kind: prompt or completion)",
            inference_tokens.clone(),
        );
        registry.register(
            "citadel_inference_time_to_first_token_seconds",
            "Time from the request to the first token, by engine",
            inference_first_token.clone(),
        );
        let gpu = GPU_GAUGES
            .iter()
            .map(|(name, help)| {
                let family = Family::<GpuLabels, FloatGauge>::default();
                registry.register(*name, *help, family.clone());
                (*name, family)
            })
            .collect();
        Metrics {
            registry,
            jobs_started,
            jobs_finished,
            job_duration,
            first_chunk,
            jobs_in_flight,
            publish_failures,
            collector_duration,
            collector_errors,
            cpu_percent,
            memory_used,
            memory_total,
            gpu,
            watched_cpu,
            watched_memory,
            http_messages,
            http_queued,
            http_spool_bytes,
            inference_requests,
            inference_tokens,
            inference_first_token,
        }
    }

    /// A job started.
    pub fn job_started(&self, job_type: &str) {
        self.jobs_started
            .get_or_create(&JobLabels {
                r#type: job_type.into(),
            })
            .inc();
    }

    /// A job's first chunk, `after` its start.
    pub fn first_chunk(&self, job_type: &str, after: Duration) {
        self.first_chunk
            .get_or_create(&JobLabels {
                r#type: job_type.into(),
            })
            .observe(after.as_secs_f64());
    }

    /// A job finished with `outcome` (`ok` or a failure class).
    pub fn job_finished(&self, job_type: &str, outcome: &str, took: Duration) {
        self.jobs_finished
            .get_or_create(&OutcomeLabels {
                r#type: job_type.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.job_duration
            .get_or_create(&JobLabels {
                r#type: job_type.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Jobs held now.
    pub fn set_in_flight(&self, jobs: usize) {
        self.jobs_in_flight.set(jobs as i64);
    }

    /// A status publication to `sink` failed.
    pub fn publish_failed(&self, sink: &str) {
        self.publish_failures
            .get_or_create(&SinkLabels { sink: sink.into() })
            .inc();
    }

    /// Update the node and GPU gauges from a snapshot.
    pub fn observe(&self, snapshot: &Snapshot) {
        self.collector_duration.observe(snapshot.took.as_secs_f64());
        self.collector_errors.set(snapshot.errors.len() as i64);
        if let Some(system) = &snapshot.system {
            self.cpu_percent.set(system.cpu_percent);
            self.memory_used.set(system.memory_used_bytes as i64);
            self.memory_total.set(system.memory_total_bytes as i64);
        }
        let host = snapshot
            .system
            .as_ref()
            .map(|system| system.hostname.clone())
            .unwrap_or_default();
        for (name, family) in &self.gpu {
            // GPUs that vanished must not keep reporting their last values.
            family.clear();
            for gpu in &snapshot.gpu.gpus {
                let labels = GpuLabels {
                    gpu: gpu.index.to_string(),
                    UUID: gpu.uuid.clone(),
                    modelName: gpu.name.clone(),
                    Hostname: host.clone(),
                };
                let value = match *name {
                    "DCGM_FI_DEV_GPU_UTIL" => gpu.utilization_percent.map(f64::from),
                    "DCGM_FI_DEV_MEM_COPY_UTIL" => gpu.memory_utilization_percent.map(f64::from),
                    "DCGM_FI_DEV_FB_USED" => gpu.memory_used_mb.map(|mib| mib as f64),
                    "DCGM_FI_DEV_FB_FREE" => gpu
                        .memory_total_mb
                        .zip(gpu.memory_used_mb)
                        .map(|(total, used)| total.saturating_sub(used) as f64),
                    "DCGM_FI_DEV_GPU_TEMP" => gpu.temperature_celsius.map(f64::from),
                    "DCGM_FI_DEV_POWER_USAGE" => gpu.power_watts,
                    "DCGM_FI_DEV_SM_CLOCK" => gpu.clocks_mhz.sm.map(f64::from),
                    "DCGM_FI_DEV_MEM_CLOCK" => gpu.clocks_mhz.memory.map(f64::from),
                    _ => None,
                };
                if let Some(value) = value {
                    family.get_or_create(&labels).set(value);
                }
            }
        }
        self.watched_cpu.clear();
        self.watched_memory.clear();
        for watched in &snapshot.watched {
            let Some(cgroup) = &watched.cgroup else { continue };
            let labels = WatchedLabels {
                name: watched.name.clone(),
            };
            if let Some(cpu) = cgroup.cpu_percent {
                self.watched_cpu.get_or_create(&labels).set(cpu);
            }
            self.watched_memory
                .get_or_create(&labels)
                .set(cgroup.memory_bytes as i64);
        }
    }

    /// A generation ended.
    pub fn generation(&self, record: &GenerationRecord<'_>) {
        self.inference_requests
            .get_or_create(&InferenceLabels {
                tenant: record.tenant.into(),
                engine: record.engine.into(),
                outcome: record.outcome.into(),
            })
            .inc();
        if let Some(usage) = record.usage {
            for (kind, count) in [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)] {
                self.inference_tokens
                    .get_or_create(&TokenLabels {
                        tenant: record.tenant.into(),
                        engine: record.engine.into(),
                        kind: kind.into(),
                    })
                    .inc_by(u64::from(count));
            }
        }
        if let Some(first) = record.time_to_first_token {
            self.inference_first_token
                .get_or_create(&EngineLabels {
                    engine: record.engine.into(),
                })
                .observe(first.as_secs_f64());
        }
    }

    /// Mirror the HTTP status publisher's counters and backlog.
    pub fn observe_http(&self, stats: &HttpPublisherStats, (queued, spooled_bytes): (usize, u64)) {
        for (outcome, count) in [
            ("sent", &stats.sent),
            ("failed_attempts", &stats.failed_attempts),
            ("rejected", &stats.rejected),
            ("spooled", &stats.spooled),
            ("dropped", &stats.dropped),
        ] {
            self.http_messages
                .get_or_create(&OutcomeOnly {
                    outcome: outcome.into(),
                })
                .set(count.load(Ordering::Relaxed) as i64);
        }
        self.http_queued.set(queued as i64);
        self.http_spool_bytes.set(spooled_bytes as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use citadel_collector::gpu::Clocks;
    use citadel_collector::{GpuInfo, GpuReport};

    use super::*;

    fn snapshot(gpus: Vec<GpuInfo>) -> Snapshot {
        Snapshot {
            at: SystemTime::now(),
            system: None,
            gpu: GpuReport {
                gpus,
                source: "nvml",
                unavailable: None,
            },
            watched: Vec::new(),
            errors: Vec::new(),
            took: Duration::from_millis(2),
        }
    }

    fn h100() -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-5f1c".into(),
            memory_used_mb: Some(1024),
            memory_total_mb: Some(81_559),
            utilization_percent: Some(37),
            memory_utilization_percent: Some(5),
            temperature_celsius: Some(41),
            power_watts: Some(118.5),
            clocks_mhz: Clocks {
                graphics: Some(1980),
                sm: Some(1980),
                memory: Some(2619),
            },
            driver: "550.90.07".into(),
            processes: Vec::new(),
        }
    }

    #[test]
    fn gpu_gauges_carry_dcgm_exporter_names_and_labels() {
        let metrics = Metrics::new();
        metrics.observe(&snapshot(vec![h100()]));
        let text = metrics.encode();
        let labels = r#"{gpu="0",UUID="GPU-5f1c",modelName="NVIDIA H100 80GB HBM3",Hostname=""}"#;
        for (name, value) in [
            ("DCGM_FI_DEV_GPU_UTIL", "37.0"),
            ("DCGM_FI_DEV_FB_USED", "1024.0"),
            ("DCGM_FI_DEV_FB_FREE", "80535.0"),
            ("DCGM_FI_DEV_GPU_TEMP", "41.0"),
            ("DCGM_FI_DEV_POWER_USAGE", "118.5"),
            ("DCGM_FI_DEV_SM_CLOCK", "1980.0"),
        ] {
            let line = format!("{name}{labels} {value}");
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        // A GPU that vanished stops reporting.
        metrics.observe(&snapshot(Vec::new()));
        assert!(!metrics.encode().contains("DCGM_FI_DEV_GPU_UTIL{"));
    }

    #[test]
    fn generations_are_metered_per_tenant_and_engine() {
        let metrics = Metrics::new();
        let record = |outcome, usage| GenerationRecord {
            tenant: "acme",
            engine: "llama",
            model: "smollm2",
            outcome,
            usage,
            time_to_first_token: Some(Duration::from_millis(40)),
            duration: Duration::from_millis(300),
        };
        let usage = citadel_transports::engines::Usage {
            prompt_tokens: 32,
            completion_tokens: 8,
        };
        metrics.generation(&record("ok", Some(usage)));
        metrics.generation(&record("ok", Some(usage)));
        metrics.generation(&record("abandoned", None));
        let text = metrics.encode();
        for line in [
            r#"citadel_inference_requests_total{tenant="acme",engine="llama",outcome="ok"} 2"#,
            r#"citadel_inference_requests_total{tenant="acme",engine="llama",outcome="abandoned"} 1"#,
            r#"citadel_inference_tokens_total{tenant="acme",engine="llama",kind="prompt"} 64"#,
            r#"citadel_inference_tokens_total{tenant="acme",engine="llama",kind="completion"} 16"#,
            r#"citadel_inference_time_to_first_token_seconds_count{engine="llama"} 3"#,
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn jobs_are_counted_and_timed_by_type_and_outcome() {
        let metrics = Metrics::new();
        metrics.job_started("echo");
        metrics.first_chunk("echo", Duration::from_micros(300));
        metrics.job_finished("echo", "ok", Duration::from_millis(3));
        metrics.job_finished("echo", "timeout", Duration::from_millis(30));
        let text = metrics.encode();
        for line in [
            r#"citadel_jobs_started_total{type="echo"} 1"#,
            r#"citadel_jobs_finished_total{type="echo",outcome="ok"} 1"#,
            r#"citadel_jobs_finished_total{type="echo",outcome="timeout"} 1"#,
            r#"citadel_job_duration_seconds_count{type="echo"} 2"#,
            r#"citadel_job_first_chunk_seconds_count{type="echo"} 1"#,
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}

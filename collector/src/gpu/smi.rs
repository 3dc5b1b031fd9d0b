//! The fallback when NVML cannot load: `nvidia-smi --query-gpu=…
//! --format=csv,noheader,nounits`, then `--query-compute-apps=…` for the
//! processes on each GPU, each run as a child process that is killed when
//! it overruns its timeout (a wedged driver can hang it for minutes).

use std::time::Duration;

use tokio::process::Command;

use super::{Clocks, GpuInfo, GpuProcess};

/// The fields asked of `nvidia-smi`, in the order [`parse_smi_csv`] reads.
pub const SMI_QUERY: &str = "index,name,uuid,memory.used,memory.total,utilization.gpu,utilization.memory,temperature.gpu,power.draw,clocks.gr,clocks.sm,clocks.mem,driver_version";

/// The fields of `--query-compute-apps`, in the order [`attach_compute_apps`] reads.
pub const SMI_APPS_QUERY: &str = "gpu_uuid,pid,used_memory";

/// Whether `program` can be found (on `PATH` when it has no slash).
pub fn available(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Query every GPU and the processes on each, killing `program` if it runs
/// longer than `timeout`. The process list is best effort: when its query
/// fails the GPUs are still reported.
pub async fn query(program: &str, timeout: Duration) -> Result<Vec<GpuInfo>, String> {
    let mut gpus = parse_smi_csv(&run(program, &format!("--query-gpu={SMI_QUERY}"), timeout).await?)?;
    match run(program, &format!("--query-compute-apps={SMI_APPS_QUERY}"), timeout).await {
        Ok(apps) => attach_compute_apps(&mut gpus, &apps),
        Err(err) => tracing::debug!(error = %err, "no GPU process list from nvidia-smi"),
    }
    Ok(gpus)
}

/// Run `program <query> --format=csv,noheader,nounits`: its stdout.
async fn run(program: &str, query: &str, timeout: Duration) -> Result<String, String> {
    let child = Command::new(program)
        .arg(query)
        .arg("--format=csv,noheader,nounits")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| format!("{program} timed out after {} ms (killed)", timeout.as_millis()))?
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{program} failed ({}): {}", output.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Put the processes of `--query-compute-apps` CSV ([`SMI_APPS_QUERY`]) on
/// their GPUs (matched by UUID); lines that do not parse are skipped.
pub fn attach_compute_apps(gpus: &mut [GpuInfo], text: &str) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    for record in reader.records().flatten() {
        let (Some(uuid), Some(Ok(pid))) = (record.get(0), record.get(1).map(str::parse::<u32>)) else {
            continue;
        };
        let Some(gpu) = gpus.iter_mut().find(|gpu| gpu.uuid == uuid) else {
            continue;
        };
        if gpu.processes.iter().any(|process| process.pid == pid) {
            continue;
        }
        gpu.processes.push(GpuProcess {
            pid,
            memory_mb: record.get(2).and_then(|mib| mib.parse().ok()),
            sm_percent: None,
        });
        gpu.processes.sort_by_key(|process| process.pid);
    }
}

/// Parse `nvidia-smi`'s CSV for [`SMI_QUERY`]; `[N/A]` and the like become
/// `None`.
pub fn parse_smi_csv(text: &str) -> Result<Vec<GpuInfo>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut gpus = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| format!("unreadable nvidia-smi output: {err}"))?;
        if record.len() != SMI_QUERY.split(',').count() {
            return Err(format!(
                "nvidia-smi returned {} fields, expected {}",
                record.len(),
                SMI_QUERY.split(',').count()
            ));
        }
        let field = |i: usize| record.get(i).unwrap_or_default();
        let number = |i: usize| field(i).parse::<f64>().ok();
        gpus.push(GpuInfo {
            index: field(0)
                .parse()
                .map_err(|_| format!("nvidia-smi: bad GPU index {:?}", field(0)))?,
            name: field(1).to_string(),
            uuid: field(2).to_string(),
            memory_used_mb: number(3).map(|mib| mib as u64),
            memory_total_mb: number(4).map(|mib| mib as u64),
            utilization_percent: number(5).map(|percent| percent as u32),
            memory_utilization_percent: number(6).map(|percent| percent as u32),
            temperature_celsius: number(7).map(|celsius| celsius as u32),
            power_watts: number(8),
            clocks_mhz: Clocks {
                graphics: number(9).map(|mhz| mhz as u32),
                sm: number(10).map(|mhz| mhz as u32),
                memory: number(11).map(|mhz| mhz as u32),
            },
            driver: field(12).to_string(),
            processes: Vec::new(),
        });
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_csv_with_missing_values() {
        let csv = "0, NVIDIA H100 80GB HBM3, GPU-5a1b, 1024, 81559, 37, 5, 41, 118.52, 1980, 1980, 2619, 580.159.04\n\
                   1, NVIDIA H100 80GB HBM3, GPU-77cd, 0, 81559, 0, 0, 30, [N/A], 345, 345, 2619, 580.159.04\n";
        let gpus = parse_smi_csv(csv).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            (gpus[0].memory_used_mb, gpus[0].memory_total_mb),
            (Some(1024), Some(81559))
        );
        assert_eq!(gpus[0].power_watts, Some(118.52));
        assert_eq!(
            gpus[0].clocks_mhz,
            Clocks {
                graphics: Some(1980),
                sm: Some(1980),
                memory: Some(2619)
            }
        );
        assert_eq!(gpus[1].power_watts, None, "[N/A]");
        assert_eq!(gpus[1].driver, "580.159.04");
        assert!(parse_smi_csv("0, only, three\n").unwrap_err().contains("fields"));
    }

    #[test]
    fn compute_apps_land_on_their_gpus() {
        let mut gpus = parse_smi_csv(
            "0, NVIDIA H100 80GB HBM3, GPU-aaaa, 41000, 81559, 90, 40, 60, 500, 1980, 1980, 2619, 580.159.04\n\
             1, NVIDIA H100 80GB HBM3, GPU-bbbb, 40000, 81559, 88, 38, 59, 490, 1980, 1980, 2619, 580.159.04\n",
        )
        .unwrap();
        attach_compute_apps(
            &mut gpus,
            "GPU-aaaa, 4242, 40960\nGPU-bbbb, 4243, 39936\nGPU-bbbb, 4242, 512\nGPU-cccc, 1, 1\nnot a line\n\
             GPU-aaaa, 77, [N/A]\n",
        );
        let pids = |gpu: &GpuInfo| gpu.processes.iter().map(|process| process.pid).collect::<Vec<_>>();
        assert_eq!(pids(&gpus[0]), [77, 4242]);
        assert_eq!(pids(&gpus[1]), [4242, 4243]);
        assert_eq!(gpus[0].processes[1].memory_mb, Some(40960));
        assert_eq!(gpus[0].processes[0].memory_mb, None, "[N/A]");
    }
}

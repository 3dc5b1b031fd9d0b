//! A fake `nvidia-smi` (CI has no GPU, and without NVML the collector
//! falls back to `nvidia-smi`): one H100 80GB, 1024 of 81559 MiB used,
//! whose temperature the test sets.

use std::path::PathBuf;

/// The fake and the file its temperature comes from.
pub struct FakeSmi {
    dir: tempfile::TempDir,
}

impl FakeSmi {
    /// A fake GPU at `celsius`.
    pub fn new(celsius: u32) -> FakeSmi {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = FakeSmi { dir };
        fake.set_temperature(celsius);
        std::fs::write(
            fake.program(),
            format!(
                "#!/bin/sh\necho \"0, NVIDIA H100 80GB HBM3, GPU-fake-0, 1024, 81559, 10, 5, $(cat {}), 120.5, 1980, 1980, 2619, 580.159.04\"\n",
                fake.temperature_file().display()
            ),
        )
        .expect("write the fake nvidia-smi");
        std::fs::set_permissions(fake.program(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod the fake nvidia-smi");
        fake
    }

    /// The program, for `telemetry.nvidia_smi`.
    pub fn program(&self) -> PathBuf {
        self.dir.path().join("nvidia-smi")
    }

    /// The GPU is now at `celsius`.
    pub fn set_temperature(&self, celsius: u32) {
        std::fs::write(self.temperature_file(), celsius.to_string()).expect("write the temperature");
    }

    fn temperature_file(&self) -> PathBuf {
        self.dir.path().join("temperature")
    }
}

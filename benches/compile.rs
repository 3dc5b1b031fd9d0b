//! Loading the `extract` component (775 KB) cold vs from the node's
//! compiled cache: `compile` is a store with no cached artifact (sha256,
//! validation, Cranelift, classification), `cached_load` a fresh store
//! (as after a restart) reading the artifact its cache holds.

use citadel_benches::{guest, sandbox_config};
use citadel_runtime::{Allocation, ComponentStore, SandboxEngine};
use criterion::{Criterion, criterion_group, criterion_main};

fn load(c: &mut Criterion) {
    let bytes = std::fs::read(guest("extract")).unwrap();
    let engine = SandboxEngine::new(&sandbox_config(), Allocation::Pooling).unwrap();
    let cache = tempfile::tempdir().unwrap();
    ComponentStore::new(engine.clone(), Some(cache.path()))
        .unwrap()
        .load(&bytes)
        .unwrap();

    let mut group = c.benchmark_group("extract_load");
    group.sample_size(20);
    group.bench_function("compile", |b| {
        b.iter(|| {
            let store = ComponentStore::new(engine.clone(), None).unwrap();
            store.load(&bytes).unwrap();
            assert_eq!(store.stats().compiled, 1);
        })
    });
    group.bench_function("cached_load", |b| {
        b.iter(|| {
            let store = ComponentStore::new(engine.clone(), Some(cache.path())).unwrap();
            store.load(&bytes).unwrap();
            assert_eq!(store.stats().from_disk, 1);
        })
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);

//! `citadel component keygen | publish | list | rollback`: the fleet's
//! handler registry on Redis (`citadel_transports::redis::registry`), and
//! the signing keys its components may carry.

use std::path::PathBuf;
use std::time::SystemTime;

use citadel_transports::redis as transport;
use citadel_transports::redis::registry::{HandlerRecord, Registry};
use citadel_transports::wire;
use clap::Args;

use super::{Failure, RedisArgs, required_redis};
use crate::components::{ComponentStore, signing};
use crate::config::Config;
use crate::handlers::admission;
use crate::sandbox::engine::{Allocation, SandboxEngine};

/// Arguments of `citadel component keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (never overwritten); the public key
    /// goes to `<FILE>.pub`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Arguments of `citadel component publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The component (`.wasm`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The job type it is to handle.
    #[arg(long, value_name = "TYPE")]
    pub job_type: String,
    /// Sign its digest with this secret key (`citadel component keygen`).
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
    /// The registry's Redis.
    #[command(flatten)]
    pub registry: RedisArgs,
}

/// Arguments of `citadel component list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The registry's Redis.
    #[command(flatten)]
    pub registry: RedisArgs,
}

/// Arguments of `citadel component rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The job type to point back at its previous component.
    #[arg(long, value_name = "TYPE")]
    pub job_type: String,
    /// The registry's Redis.
    #[command(flatten)]
    pub registry: RedisArgs,
}

pub(super) fn keygen(args: KeygenArgs) -> Result<(), Failure> {
    let key = signing::generate();
    let public = signing::write_key(&args.file, &key)
        .map_err(|err| Failure::input(format!("cannot write {}: {err}", args.file.display())))?;
    println!(
        "secret key  {} (mode 0600: keep it with the publisher)",
        args.file.display()
    );
    println!(
        "public key  {} → add to [components] trusted_keys on the nodes:",
        public.display()
    );
    println!("{}", signing::public_hex(&key));
    Ok(())
}

fn registry(config: &Config) -> Result<Registry, Failure> {
    Ok(Registry::new(&required_redis(config)?))
}

fn unreachable(err: transport::RedisError) -> Failure {
    Failure::job(format!("the registry's Redis does not answer: {err}"))
}

fn publisher() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

pub(super) async fn publish(args: PublishArgs, config: &Config) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.file)
        .map_err(|err| Failure::input(format!("cannot read {}: {err}", args.file.display())))?;
    // Checked here first: a component no node could load is never published.
    let engine = SandboxEngine::new(&config.sandbox, Allocation::OnDemand)
        .map_err(|err| Failure::input(format!("cannot create the wasmtime engine: {err:#}")))?;
    let store = ComponentStore::new(engine, config.sandbox.cache_dir.as_deref()).map_err(Failure::input)?;
    let loaded = store.load(&bytes).map_err(Failure::input)?;
    admission::check_provided(&loaded).map_err(Failure::input)?;
    let (signature, signer) = match &args.sign {
        Some(path) => {
            let key = signing::read_key(path).map_err(Failure::input)?;
            (
                Some(signing::sign(&key, &loaded.digest)),
                Some(signing::public_hex(&key)),
            )
        }
        None => (None, None),
    };
    let record = HandlerRecord {
        digest: loaded.digest.to_string(),
        size: bytes.len() as u64,
        signature,
        signer,
        publisher: publisher(),
        published_at: wire::timestamp(SystemTime::now()),
    };
    registry(config)?
        .publish(&args.job_type, &bytes, &record)
        .await
        .map_err(unreachable)?;
    println!(
        "published {} ({} bytes, needs {}) as the handler of `{}`, {}",
        record.digest,
        record.size,
        loaded.interface.required,
        args.job_type,
        record
            .signer
            .as_deref()
            .map_or("unsigned".to_string(), |signer| format!("signed by {signer}"))
    );
    Ok(())
}

pub(super) async fn list(args: ListArgs, config: &Config) -> Result<(), Failure> {
    let (records, unreadable) = registry(config)?.handlers().await.map_err(unreachable)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records).expect("records serialize"));
        return Ok(());
    }
    if records.is_empty() && unreadable.is_empty() {
        println!("no handlers published");
    }
    for (job_type, record) in &records {
        let signer = record
            .signer
            .as_deref()
            .map_or("unsigned", |signer| &signer[..signer.len().min(16)]);
        println!(
            "{job_type:<20} {}  {:>9} bytes  signer {signer:<16}  by {}  at {}",
            record.digest, record.size, record.publisher, record.published_at
        );
    }
    for bad in unreadable {
        println!("{:<20} unreadable: {}", bad.job_type, bad.problem);
    }
    Ok(())
}

pub(super) async fn rollback(args: RollbackArgs, config: &Config) -> Result<(), Failure> {
    match registry(config)?.rollback(&args.job_type).await.map_err(unreachable)? {
        Some(record) => {
            println!(
                "`{}` is handled by {} again (published by {} at {})",
                args.job_type, record.digest, record.publisher, record.published_at
            );
            Ok(())
        }
        None => Err(Failure::input(format!(
            "no earlier handler of `{}` to roll back to",
            args.job_type
        ))),
    }
}

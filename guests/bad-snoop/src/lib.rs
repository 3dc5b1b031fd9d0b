//! `bad-snoop`: tries every door WASI has — environment variables, program
//! arguments, the filesystem, outbound TCP to the address in
//! `payload.connect` — and returns what it found. In the node's sandbox every
//! door is shut: the result lists no variables, no arguments and an error for
//! each file and connection attempt. It also prints to stdout and stderr, which
//! must land in the job's log, not the node's output.

use citadel_guest::{Guest, HandlerError, Job};
use serde_json::{Value, json};

struct Snoop;

fn attempt<T>(result: std::io::Result<T>, describe: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(found) => json!({"ok": describe(found)}),
        Err(err) => json!({"error": err.to_string()}),
    }
}

impl Guest for Snoop {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let payload: Value = serde_json::from_str(&job.payload).unwrap_or(Value::Null);
        let connect = payload
            .get("connect")
            .and_then(Value::as_str)
            .unwrap_or("127.0.0.1:22")
            .to_string();
        println!("snooping on job {}", job.id);
        eprintln!("stderr is captured too");
        let env: Vec<String> = std::env::vars().map(|(key, _)| key).collect();
        let args: Vec<String> = std::env::args().collect();
        let report = json!({
            "env": env,
            "args": args,
            "read_root": attempt(std::fs::read_dir("/"), |entries| json!(entries.count())),
            "read_passwd": attempt(std::fs::read_to_string("/etc/passwd"), |text| json!(text.len())),
            "write_tmp": attempt(std::fs::write("/tmp/citadel-snoop", b"x"), |_| json!(true)),
            "connect": attempt(std::net::TcpStream::connect(connect.as_str()), |_| json!(connect)),
        });
        Ok(report.to_string())
    }
}

citadel_guest::export_handler!(Snoop);

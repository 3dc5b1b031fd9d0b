//! The `citadel` binary as a user meets it: exit codes, one-line reasons,
//! streamed chunks, JSON events, `component inspect`, configuration errors.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

use citadel_tests::{citadel_bin, guest};
use serde_json::Value;

/// Run `citadel` with `args`, its compiled cache in a private directory.
fn citadel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    let mut command = Command::new(citadel_bin());
    command
        .args(args)
        .env("CITADEL_SANDBOX__CACHE_DIR", cache.path())
        .env_remove("CITADEL_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running citadel")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn guest_arg(name: &str) -> String {
    guest(name).display().to_string()
}

#[test]
fn run_prints_chunks_then_the_result() {
    let out = citadel(
        &[
            "run",
            "--component",
            &guest_arg("echo"),
            "--payload",
            r#"{"text":"hello wasm"}"#,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("chunk 0: hello\nchunk 1: wasm\nresult: {"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""text": "hello wasm""#), "{stdout}");
}

#[test]
fn run_json_prints_one_event_per_line() {
    let out = citadel(
        &[
            "run",
            "--json",
            "--component",
            &guest_arg("echo"),
            "--payload",
            r#"{"text":"a b"}"#,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["chunk", "chunk", "end"]);
    assert_eq!(events[1]["data"]["index"], 1);
    assert_eq!(events[2]["data"]["result"]["text"], "a b");
}

#[test]
fn a_failed_job_exits_1_with_a_one_line_reason() {
    let out = citadel(
        &["run", "--component", &guest_arg("bad-spin"), "--timeout-ms", "200"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("citadel: job failed (deadline): deadline exceeded"),
        "{stderr}"
    );

    let out = citadel(&["run", "--json", "--component", &guest_arg("bad-sneaky")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let event: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(event["type"], "error");
    assert_eq!(event["data"]["class"], "capability_refused");
    assert!(text(&out.stderr).contains("imports [inference], which tenant `default` is not granted"));
}

#[test]
fn bad_input_exits_2_before_anything_runs() {
    let out = citadel(
        &["run", "--component", &guest_arg("echo"), "--payload", "{not json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--payload is not valid JSON"),
        "{}",
        text(&out.stderr)
    );

    let out = citadel(&["run", "--component", "/nonexistent/handler.wasm"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read component /nonexistent/handler.wasm"));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[tenants.acme]\ncapabilities = [\"log\"]\nmax_output_byte = 10\n",
    )
    .unwrap();
    let out = citadel(
        &[
            "run",
            "--component",
            &guest_arg("echo"),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("max_output_byte"), "{}", text(&out.stderr));

    let config = dir.path().join("citadel.toml");
    std::fs::write(&config, "[sandbox]\nepoch_tick_ms = 5\nmax_instance = 3\n").unwrap();
    let out = citadel(
        &[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--component",
            &guest_arg("echo"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("max_instance"), "{}", text(&out.stderr));

    let out = citadel(
        &["run", "--component", &guest_arg("echo")],
        &[("CITADEL_SANDBOX__EPOCH_TICK_MS", "0")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("sandbox.epoch_tick_ms"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn policy_file_grants_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[tenants.default]\ncapabilities = [\"log\"]\n").unwrap();
    let out = citadel(
        &[
            "run",
            "--component",
            &guest_arg("echo"),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("imports [stream], which tenant `default` is not granted"));
}

#[test]
fn inspect_shows_digest_capabilities_imports_and_exports() {
    let out = citadel(&["component", "inspect", "--json", &guest_arg("extract")], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(guest("extract")).unwrap();
    assert_eq!(report["digest"], format!("sha256:{}", sha256sum(&bytes)));
    assert_eq!(report["size"], bytes.len());
    assert_eq!(report["capabilities"], serde_json::json!(["log", "stream"]));
    assert_eq!(
        report["exports"],
        serde_json::json!([{"name": "handle", "kind": "func"}])
    );
    let imports = report["imports"].as_array().unwrap();
    assert!(
        imports
            .iter()
            .any(|import| import["name"] == "citadel:handler/log@0.1.0")
    );

    let out = citadel(&["component", "inspect", &guest_arg("bad-sneaky")], &[]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("capabilities  [inference]"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn inspect_of_something_else_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.wasm");
    std::fs::write(&file, "these are notes, not a component").unwrap();
    let out = citadel(&["component", "inspect", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not a WebAssembly binary") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// The digest the node should report, computed by another implementation.
fn sha256sum(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&file).output().expect("sha256sum");
    text(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn help_opens_with_what_citadel_is_for_its_users() {
    let out = citadel(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.starts_with("citadel turns a Linux GPU machine into a safe, multi-tenant job worker"),
        "{help}"
    );
    assert!(help.contains("Coming from Citadel"), "{help}");
    for command in ["init", "up", "agent", "work", "run", "submit", "status", "component"] {
        assert!(help.contains(&format!("\n  {command} ")), "{command}: {help}");
    }
}

#[test]
fn citadel_variables_are_read_and_unknown_ones_only_warned_about() {
    // A status snapshot taken here: the device code is Citadel's variable.
    let out = citadel(
        &["status", "--local", "--json", "--status-addr", "127.0.0.1:1"],
        &[("CITADEL_DEVICE_CODE", "dev-77"), ("CITADEL_NO_SUCH_KEY", "1")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let message: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(message["deviceCode"], "dev-77");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("CITADEL_NO_SUCH_KEY") && stderr.contains("ignoring a CITADEL_ environment variable"),
        "{stderr}"
    );
    // A typo in a section is warned about too; a bad value of a real key is still an error.
    let out = citadel(
        &["status", "--local", "--json", "--status-addr", "127.0.0.1:1"],
        &[("CITADEL_TELEMETRY__STATUS_INTERVAL", "5")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("CITADEL_TELEMETRY__STATUS_INTERVAL"));
    let out = citadel(
        &["status", "--local", "--json"],
        &[("CITADEL_TELEMETRY__STATUS_INTERVAL_S", "0")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("telemetry.status_interval_s"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let out = citadel(
        &[
            "--log",
            "info",
            "--log-format",
            "json",
            "status",
            "--local",
            "--json",
            "--status-addr",
            "127.0.0.1:1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(record["level"].is_string() && record["fields"].is_object(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains(r#""target":"citadel_collector::gpu""#)),
        "the collector's line about the GPUs: {lines:?}"
    );
}

#[test]
fn ctrl_c_cancels_the_running_job() {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(citadel_bin())
        .args([
            "run",
            "--json",
            "--component",
            &guest_arg("slow"),
            "--payload",
            r#"{"ms":60000,"chunks":600}"#,
        ])
        .env("CITADEL_SANDBOX__CACHE_DIR", cache.path())
        .env_remove("CITADEL_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running citadel");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains(r#""type":"chunk""#), "the job is running: {first}");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let mut status = None;
    citadel_tests::wait_until(
        std::time::Duration::from_secs(10),
        "citadel run to exit after Ctrl-C",
        || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        },
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let last: Value = serde_json::from_str(rest.lines().last().expect("a last event")).unwrap();
    assert_eq!(
        (last["type"].as_str(), last["data"]["class"].as_str()),
        (Some("error"), Some("cancelled")),
        "{rest}"
    );
    let chunks = 1 + rest.lines().filter(|line| line.contains(r#""type":"chunk""#)).count();
    assert!(chunks < 600, "stopped mid-run ({chunks} of 600 chunks)");
    assert_eq!(status.unwrap().code(), Some(1));
}

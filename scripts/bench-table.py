#!/usr/bin/env python3
"""The README's benchmark tables, from one run of scripts/bench.

Gathers criterion's medians (target/criterion) and every end-to-end bench's
JSON summary (target/bench/*.json) into one run, saves it (--save
docs/bench/run.json), prints every table, and rewrites the README's
generated blocks (--readme README.md: between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`), so no table in the README is edited by hand.
`--load docs/bench/run.json --readme README.md` renders a saved run again.

Each row is a measurement of this run with its ratio to the baseline of its
group, measured in the same run (never a lone absolute time).
"""
import argparse
import contextlib
import io
import json
import pathlib
import re
import sys

# group -> (baseline, [(bench, label)])
CRITERION = {
    "echo_job": ("native", [
        ("native", "native Rust function, same work (floor)"),
        ("pooling", "citadel: the tenant's kept instance (default, `jobs_per_instance = 100`)"),
        ("fresh", "citadel: a fresh instance from the cached InstancePre (`jobs_per_instance = 1`)"),
        ("dispatcher", "citadel: the same through the dispatcher (handler, tenant slot, outcome)"),
        ("on_demand", "citadel: a fresh instance, on-demand allocation"),
        ("process_per_job", "one process per job (`citadel run`)"),
    ]),
    "extract_load": ("cached_load", [
        ("cached_load", "load `extract` from the compiled cache"),
        ("compile", "compile `extract` (775 KB)"),
    ]),
    **{f"snapshot_{n}": ("cgroups_rs", [
        ("collector", f"citadel collector: {n} processes, each in its own cgroup"),
        ("file_floor", f"floor: the same files, plain reads, one thread"),
        ("cgroups_rs", f"the same {n} through cgroups-rs controllers"),
    ]) for n in (10, 100, 1000)},
    "snapshot_cpu": ("sysinfo_refresh_all", [
        ("node_snapshot", "CPU time of one node snapshot (10 managed processes)"),
        ("sysinfo_refresh_all", "CPU time of sysinfo `refresh_all`"),
    ]),
    "service_launch": ("shell_join", [
        ("direct", "spawn `/bin/true`, no cgroup (floor)"),
        ("shell_join", "`sh -c 'echo $$ > cgroup.procs…; exec true'`"),
        ("citadel_launcher", "`citadel service-exec --join … -- true` (what the node runs)"),
    ]),
    "shell_command": ("setpriv", [
        ("direct", "spawn `/bin/true` as root, no cgroup (floor)"),
        ("setpriv", "`setpriv --reuid … --regid … --clear-groups -- true` (as another user, no limits)"),
        ("citadel", "a whole `shell_command`: own cgroup with cpu/memory/pids limits, user switch, cleanup"),
    ]),
    "model_download_16mib": ("native", [
        ("native", "native: reqwest GET + SHA-256 + write + fsync + rename"),
        ("citadel", "citadel: a `model_download` job (wasi:http, capability `models`, progress chunks)"),
    ]),
    "http_get_1kib": ("native", [
        ("native", "native: reqwest GET on a fresh connection"),
        ("citadel", "citadel: an `http-fetch` job (instantiate, egress checks, connect, GET)"),
    ]),
    "fleet_query_1000x8": ("sqlite", [
        ("registry", "citadel monitor: up nodes, a GPU with 20 GB free, model M — from memory (1000 nodes × 8 GPUs)"),
        ("sqlite", "the same question as SQL over an indexed in-memory SQLite copy"),
    ]),
    "event_ingest_1000": ("raw_sqlite", [
        ("raw_sqlite", "raw batched SQLite inserts of 1000 events (same table and indexes; floor)"),
        ("http_batch", "`POST /v1/events/batch` of the same 1000 (HTTP, checks, judgement, commit)"),
    ]),
    "gpu_sample": ("nvidia_smi", [
        ("nvml", "every GPU through NVML"),
        ("nvidia_smi", "`nvidia-smi --query-gpu` once"),
    ]),
}

QUEUES = [
    ("floor", "floor: citadel's Redis work per job and nothing else (`benches/queue_floor.rs`, 64 per read)"),
    ("citadel", "citadel work, 16 concurrent jobs, one process"),
    ("citadel_no_events", "the same with fleet events off (`telemetry.events = false`)"),
    ("dramatiq", "Dramatiq 2.2, 2 processes × 8 threads"),
    ("rq_simple", "RQ 3.0, 2 SimpleWorkers (no fork)"),
    ("rq", "RQ 3.0, 2 workers (default: fork per job)"),
    ("celery", "Celery 5.7, prefork, 2 processes"),
]


def criterion_medians(root):
    """{group: {bench: median ns}} of every bench in the CRITERION list
    that has estimates under `root` (criterion's output directory)."""
    medians = {}
    for group, (_, rows) in CRITERION.items():
        for bench, _ in rows:
            path = root / group / bench / "new" / "estimates.json"
            if path.exists():
                medians.setdefault(group, {})[bench] = json.loads(path.read_text())["median"]["point_estimate"]
    return medians


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def criterion_table(medians):
    print("| measurement | median | vs baseline |")
    print("| --- | ---: | ---: |")
    for group, (baseline, rows) in CRITERION.items():
        base = medians.get(group, {}).get(baseline)
        for bench, label in rows:
            value = medians.get(group, {}).get(bench)
            if value is None or base is None:
                continue
            note = "baseline" if bench == baseline else f"{value / base:.3g}×"
            print(f"| {group}: {label} | {human(value)} | {note} |")
    snapshot_cpu = medians.get("snapshot_cpu", {}).get("node_snapshot")
    if snapshot_cpu is not None:
        print(f"| collector at a 1 s status interval: share of one core | {snapshot_cpu / 1e9 * 100:.3f} % | |")


def rate_of(result):
    """jobs/s of a queue result (a number, or citadel's dict with its
    completed and not-completed counts)."""
    return result["jobs_per_s"] if isinstance(result, dict) else result


def queue_tables(summary):
    jobs, slow, rounds = summary.get("jobs"), summary.get("slow_jobs"), summary.get("rounds", 1)
    rates = {name: rate_of(summary[name]) for name, _ in QUEUES if summary.get(name) is not None}
    floor, celery = rates.get("floor"), rates.get("celery")
    print(f"\n| no-op jobs through one local Redis ({jobs:,} jobs a run, RQ {slow:,}; completed jobs only; "
          f"the median of {rounds} interleaved runs) | jobs/s | runs, min–max | of the floor | vs Celery |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, label in QUEUES:
        if name not in rates:
            continue
        rate = rates[name]
        result = summary[name]
        if isinstance(result, dict) and result.get("not_completed"):
            label += " — not completed: " + ", ".join(f"{n} {status}" for status, n in result["not_completed"].items())
        of_floor = "floor" if name == "floor" else (f"{rate / floor * 100:.0f} %" if floor else "")
        vs_celery = "baseline" if name == "celery" else (f"{rate / celery:.3g}×" if celery else "")
        runs = result.get("runs", [rate]) if isinstance(result, dict) else [rate]
        spread = f"{min(runs):,.0f}–{max(runs):,.0f}"
        print(f"| {label} | {rate:,.0f} | {spread} | {of_floor} | {vs_celery} |")
    if rates.get("citadel") and rates.get("dramatiq"):
        print(f"| citadel vs Dramatiq | {rates['citadel'] / rates['dramatiq']:.2f}× | | | |")
    if rates.get("citadel") and rates.get("citadel_no_events"):
        cost = 1 - rates["citadel"] / rates["citadel_no_events"]
        print(f"| cost of the job events on citadel's jobs/s (the two citadel rows) | {cost * 100:+.1f} % | | | |")
    lone = summary.get("lone")
    if lone:
        added_table("a lone job's round trip at low load (enqueue → `end` on Pub/Sub)",
                    ("floor (the same Redis work, nothing else)", lone["floor"]),
                    ("citadel work (sandboxed `echo`)", lone["citadel"]), "citadel added over the floor")
    latency = summary.get("latency")
    if latency:
        added_table("chunk latency (emit → redis-py subscriber)",
                    ("baseline: Python PUBLISH from another process → same subscriber", latency["baseline"]),
                    ("citadel: guest `emit` → subscriber", latency["citadel"]), "citadel added over the baseline")


def added_table(title, baseline, ours, added_label):
    """p50/p99 of a baseline and of citadel's path, and what citadel adds."""
    (base_label, base), (ours_label, ours) = baseline, ours
    print(f"\n| {title} | p50 | p99 |")
    print("| --- | ---: | ---: |")
    for label, row in ((base_label, base), (ours_label, ours)):
        print(f"| {label} | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms |")
    print(f"| {added_label} | {ours['p50_ms'] - base['p50_ms']:+.3f} ms | {ours['p99_ms'] - base['p99_ms']:+.3f} ms |")


def recovery_table(summary):
    ttl, poll = summary["liveness_ttl_ms"], summary["cancel_poll_ms"]
    print(f"\n| recovery, release nodes, default settings | median | max | median vs baseline |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| baseline: the liveness TTL a dead worker's jobs wait out by design | {ttl} ms | | baseline |")
    print(f"| `kill -9` of a node running 2 jobs → both started again on another ({summary['resume_rounds']} rounds) "
          f"| {summary['resume_median_ms']:.0f} ms | {summary['resume_max_ms']:.0f} ms "
          f"| {summary['resume_median_ms'] / ttl:.2f}× |")
    print(f"| baseline: the cancel flag poll (`worker.cancel_poll_ms`) | {poll} ms | | baseline |")
    print(f"| cancel flag set → the running job's `cancelled` event ({summary['cancels']} jobs) "
          f"| {summary['cancel_median_ms']:.0f} ms | {summary['cancel_max_ms']:.0f} ms "
          f"| {summary['cancel_median_ms'] / poll:.2f}× |")


def telemetry_table(summary):
    pairs = summary.get("pairs", 1)
    print(f"\n| idle `citadel work` node, CPU ({pairs} alternating runs of {summary['window_s']:.0f} s each, "
          f"read in {summary.get('resolution', 'clock ticks')}) | share of one core | vs baseline |")
    print("| --- | ---: | ---: |")
    base = summary["idle_node_status_hourly_core_share"]
    ours = summary["idle_node_status_every_second_core_share"]
    print(f"| baseline: status every hour | {base * 100:.3f} % | baseline |")
    print(f"| status every second | {ours * 100:.3f} % | {ours / base:.3g}× |" if base else
          f"| status every second | {ours * 100:.3f} % | |")
    difference = summary["telemetry_at_1s_core_share"]
    ci = summary.get("telemetry_at_1s_ci95_core_share")
    interval = f" (95 % CI {ci[0] * 100:.3f} … {ci[1] * 100:.3f} %)" if ci else ""
    print(f"| telemetry at a 1 s interval: the difference, mean of the pairs{interval} | {difference * 100:.3f} % | |")


def inference_table(summary):
    print(f"\n| token latency, engine → reader ({summary['tokens']} tokens at {summary['rate']}/s, synthetic engine) "
          "| p50 | p99 | added p99 |")
    print("| --- | ---: | ---: | ---: |")
    base = summary["direct"]
    rows = [("direct", "baseline: reading the engine's SSE directly"),
            ("splice", "citadel splice (`complete-to-stream`) → Redis subscriber"),
            ("pull", "citadel pull (`complete` + `next` + `emit`) → Redis subscriber")]
    for name, label in rows:
        row = summary[name]
        added = "" if name == "direct" else f"{row['p99_ms'] - base['p99_ms']:+.3f} ms"
        print(f"| {label} | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms | {added} |")
    print("\n| tokens/s, unthrottled synthetic engine | tokens/s | vs direct |")
    print("| --- | ---: | ---: |")
    direct = summary["direct_tokens_per_s"]
    for name, label in (("direct", "baseline: reading the engine's SSE directly"), ("splice", "citadel splice → Redis subscriber"),
                        ("pull", "citadel pull → Redis subscriber")):
        rate = summary[f"{name}_tokens_per_s"]
        note = "baseline" if name == "direct" else f"{rate / direct:.3g}×"
        print(f"| {label} | {rate:,.0f} | {note} |")
    if "llm_direct" in summary:
        print("\n| real llama.cpp engine (SmolLM2-135M, 1 thread), 100 tokens | time to first token | tokens/s |")
        print("| --- | ---: | ---: |")
        for name, label in (("llm_direct", "reading its SSE directly"), ("llm_splice", "citadel splice → Redis subscriber")):
            row = summary[name]
            print(f"| {label} | {row['ttft_ms']:.1f} ms | {row['tokens_per_s']:.1f} |")


def fleet_table(summary):
    job = summary["job_ms"]
    print(f"\n| publish → first job served by the new handler ({summary['rounds']} rounds, running node) | median | vs a job |")
    print("| --- | ---: | ---: |")
    print(f"| baseline: one job, enqueue → completed, handler unchanged | {job:.1f} ms | baseline |")
    print(f"| new `extract` variant (fetch, checks, compile, swap, the job) | {summary['swap_compile_ms']:.1f} ms "
          f"| {summary['swap_compile_ms'] / job:.3g}× |")
    print(f"| rollback to a component the node compiled before | {summary['swap_cached_ms']:.1f} ms "
          f"| {summary['swap_cached_ms'] / job:.3g}× |")
    print(f"| (`citadel component publish` itself: local check and compile, Redis write) | {summary['publish_cli_ms']:.1f} ms | |")
    if "outcomes" in summary:
        outcomes = summary["outcomes"]
        others = ", ".join(f"{n} {status}" for status, n in outcomes.items() if status != "completed") or "none"
        print(f"| jobs enqueued during the swaps: completed / failed or unfinished | "
              f"{outcomes.get('completed', 0)} of {summary['jobs']} | {others} |")


def monitor_table(summary):
    beat = summary["heartbeat_ms"]
    print(f"\n| fleet simulator: {summary['nodes']} nodes × {summary['gpus']} GPUs, {summary['clients']} live-stream "
          f"clients, heartbeat {beat} ms | measured | vs baseline |")
    print("| --- | ---: | ---: |")
    idle, fleet = summary["rss_idle_mib"], summary["rss_fleet_mib"]
    print(f"| monitor RSS, idle (baseline) | {idle:.1f} MiB | baseline |")
    print(f"| monitor RSS with the fleet and the clients | {fleet:.1f} MiB | {fleet / idle:.3g}× |")
    print(f"| crash → NODE_DOWN at a live client, p50 ({summary['down_detected']} nodes) "
          f"| {summary['down_beats_p50']:.2f} heartbeats | {summary['down_beats_p50'] * beat / 1000:.2f} s |")
    print(f"| crash → NODE_DOWN, p99 | {summary['down_beats_p99']:.2f} heartbeats "
          f"| {summary['down_beats_p99'] * beat / 1000:.2f} s |")
    print(f"| clean stop (`node.stopping`) → offline at a live client, p50 / p99 "
          f"| {summary['offline_ms_p50']:.1f} / {summary['offline_ms_p99']:.1f} ms | |")
    print(f"| nodes wrongly called down | {summary['false_node_down']} | |")
    print(f"| one stored event, indexes included (baseline: its JSON, {summary['event_json_bytes']} B) "
          f"| {summary['bytes_per_event']:.0f} B | {summary['bytes_per_event'] / summary['event_json_bytes']:.3g}× |")


def dashboard_table(summary):
    print(f"\n| dashboard in headless Chromium: {summary['nodes']} simulated nodes × {summary['gpus']} GPUs "
          f"| p50 | p99 | vs baseline (p50) |")
    print("| --- | ---: | ---: | ---: |")
    for pace, label in (("isolated", "one at a time"), ("10hz", "a steady 10 events/s")):
        live, polled = summary[f"event_dom_{pace}"], summary[f"event_polled_{pace}"]
        print(f"| baseline: the same events through a poller every {summary['poll_ms'] / 1000:.0f} s, {label} "
              f"| {polled['p50']:.0f} ms | {polled['p99']:.0f} ms | baseline |")
        print(f"| event in Redis → its row in the /events DOM, live, {label} ({live['n']} events) "
              f"| {live['p50']:.1f} ms | {live['p99']:.1f} ms | {live['p50'] / polled['p50']:.3g}× |")
    render = summary["nodes_render_script_ms"]
    update = summary["nodes_update_script_ms"]
    print(f"| /nodes: navigation → first complete render (all rows) | {summary['nodes_first_render_ms']:.0f} ms | | |")
    print(f"| /nodes: the render's script time (baseline) | {render:.0f} ms | | baseline |")
    print(f"| /nodes: one node's live update, script time ({update['n']} updates) "
          f"| {update['p50']:.1f} ms | {update['p99']:.1f} ms | {update['p50'] / render:.3g}× |")
    for page, sizes in summary["bytes"].items():
        print(f"| bytes for a load of `{page}`: cold cache / revalidated (of which API JSON) "
              f"| {sizes['cold'] / 1024:.0f} KiB | {sizes['warm'] / 1024:.0f} KiB ({sizes['api'] / 1024:.0f} KiB) | |")


def soak_table(summary):
    chaos, growth = summary["chaos"], summary["growth"]
    faults = chaos["faults"]
    print(f"\nChaos soak ({summary['duration_s'] / 60:.0f} min, {chaos['workers']} workers, "
          f"{chaos['rate_per_s']} jobs/s; growth after warm-up = the first third):\n")
    print("| measured | value |")
    print("|---|---|")
    print(f"| faults injected | {faults['kill9']} kill -9, {faults['sigterm']} SIGTERM, "
          f"{faults['redis_restart']} Redis kill -9 + restart |")
    print(f"| jobs submitted / completed / failed / dead-lettered | {chaos['submitted']} / {chaos['completed']} / "
          f"{chaos['failed']} / {chaos['dead_lettered']} |")
    print(f"| lost | {chaos['lost']} |")
    print(f"| started again after their final `end` | {chaos['started_after_final_end']} |")
    print(f"| run again after a killed worker held them | {chaos['jobs_run_more_than_once']} "
          f"(≤ {faults['kill9']} kills × 4 slots) |")
    print(f"| drain after the chaos stopped | {chaos['drain_s']:.1f} s |")
    names = {"rss_kib": ("workers' RSS", 1 / 1024, "MiB"), "open_files": ("workers' open files", 1, ""),
             "redis_bytes": ("Redis used_memory", 1 / (1024 * 1024), "MiB")}
    for key, (label, scale, unit) in names.items():
        entry = growth[key]
        print(f"| {label} after warm-up → end | {entry['after_warmup'] * scale:.1f} → {entry['last'] * scale:.1f} "
              f"{unit} ({entry['growth_pct']:+.1f} %) |")


def fuzz_table(summary):
    print(f"\nProperty tests: {summary['properties']} properties × {summary['cases_each']} generated inputs "
          f"= {summary['inputs']} inputs tried, no panic, every refusal named.")


def latency_rows(baseline_label, solo, phases):
    """Another tenant's trivial-job latency: its baseline alone, then each
    (label, summary, p99 ratio) phase."""
    print("| another tenant's trivial job, enqueue → `end` | p50 | p99 | p99 vs alone |")
    print("|---|---:|---:|---:|")
    print(f"| {baseline_label} ({solo['jobs']} jobs) | {solo['p50_ms']:.1f} ms | {solo['p99_ms']:.1f} ms | baseline |")
    for label, phase, ratio in phases:
        print(f"| {label} ({phase['jobs']} jobs) | {phase['p50_ms']:.1f} ms | {phase['p99_ms']:.1f} ms | {ratio:.2f}× |")


def hostile_table(summary):
    solo, attacked = summary["victim_solo"], summary["victim_under_attack"]
    classes = {}
    for attack in summary["classes"]:
        classes.setdefault(attack["class"], []).append(attack["guest"])
    print(f"\nHostile guests: {summary['attacks']} attacks at once on one node, each failing its own job once "
          f"(never retried, never `host_error`); another tenant's trivial jobs meanwhile:\n")
    latency_rows("alone, the baseline", solo, [("during the attacks", attacked, attacked["p99_ms"] / solo["p99_ms"])])
    print(f"\nNode peak RSS through it all: {summary['node_peak_rss_mib']} MiB. Classes: "
          + "; ".join(f"`{name}` ({', '.join(sorted(set(guests)))})" for name, guests in sorted(classes.items())) + ".")


def neighbours_table(summary):
    print(f"\nNoisy neighbours (`concurrency = {summary['concurrency']}`, 2 cores; the flooding tenant has no "
          f"`max_in_flight`):\n")
    phases = [(f"beside {n} spinning jobs", summary[f"spinners_{n}"], summary[f"p99_ratio_{n}"]) for n in (4, 8)]
    latency_rows("alone, the baseline: the faster p99 of before and after", summary["solo"], phases)


# Each saved measurement and its table, in the order scripts/bench passes
# them (after the criterion directory); a missing file prints nothing.
TABLES = {
    "criterion": criterion_table,
    "queues": queue_tables,
    "recovery": recovery_table,
    "telemetry": telemetry_table,
    "inference": inference_table,
    "fleet": fleet_table,
    "monitor": monitor_table,
    "dashboard": dashboard_table,
    "soak": soak_table,
    "fuzz": fuzz_table,
    "hostile": hostile_table,
    "neighbours": neighbours_table,
}


def gather(criterion_root, bench_dir):
    """One run's results: criterion's medians and each end-to-end bench's
    JSON summary (those this run produced)."""
    run = {}
    medians = criterion_medians(criterion_root)
    if medians:
        run["criterion"] = medians
    for name in TABLES:
        path = bench_dir / f"{name}.json"
        if name != "criterion" and path.exists():
            run[name] = json.loads(path.read_text())
    return run


def render(name, summary):
    """The markdown of one table group."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        TABLES[name](summary)
    return out.getvalue().strip("\n")


def rewrite_readme(readme, run):
    """Replace each `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` block of
    `readme` with the table NAME of `run`; a block this run has no data for
    is left as it was, and named."""
    text = readme.read_text()
    for name in TABLES:
        block = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not block.search(text):
            continue
        if name not in run:
            print(f"README block `{name}` kept: this run has no `{name}` results", file=sys.stderr)
            continue
        text = block.sub(lambda match: match.group(1) + render(name, run[name]) + "\n" + match.group(2), text)
    readme.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criterion", default="target/criterion", type=pathlib.Path,
                        help="criterion's output directory")
    parser.add_argument("--bench-dir", default="target/bench", type=pathlib.Path,
                        help="where the end-to-end benches wrote their JSON")
    parser.add_argument("--save", type=pathlib.Path, help="write this run's results here (one JSON file)")
    parser.add_argument("--load", type=pathlib.Path, help="render a saved run instead of gathering one")
    parser.add_argument("--readme", type=pathlib.Path, help="rewrite this file's bench blocks from the run")
    args = parser.parse_args()
    run = json.loads(args.load.read_text()) if args.load else gather(args.criterion, args.bench_dir)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    for name in TABLES:
        if name in run:
            print(render(name, run[name]) + "\n")
    if args.readme:
        rewrite_readme(args.readme, run)


if __name__ == "__main__":
    main()

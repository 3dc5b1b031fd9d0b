#!/usr/bin/env python3
"""The fleet dashboard in a real headless Chromium (Debian's chromium and
chromedriver, driven with Selenium), against `citadel monitor` fed by the
fleet simulator's nodes (monitor_sim.py's status messages: N nodes x G
GPUs, kept up by heartbeats sent every 5 s, each announcing a 10 s interval).

Measures, in one run:
- event -> DOM: a fleet event written to Redis as a node writes it, until
  its row is in the /events page's DOM (a MutationObserver's clock; same
  machine, same clock), one event at a time and as a steady 10 events/s
  stream; baseline, measured on the same events in the same page: a poller
  asking the API every 3 s, as dashboards that refresh every few seconds do;
- /nodes with the whole fleet: time from navigation to the first complete
  render, the render's own script time (the page's User Timing measure),
  and one live update (a node's new status) as script time;
- bytes transferred for a page load, cold cache and revalidated.

Prints a JSON summary (and writes it to --out); scripts/bench-table.py turns
it into the README table.
"""

import argparse
import json
import pathlib
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from monitor_sim import free_port, percentile, start_monitor, start_redis, status_message  # noqa: E402

KEY = "dashboard-bench-key-0123456789"
POLL_MS = 3000


def now_ms():
    return time.time() * 1000


def ready(driver, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        if driver.execute_script("return document.getElementById('main')?.dataset.ready === 'true'"):
            return
        time.sleep(0.01)
    raise RuntimeError("the page did not render: " + driver.execute_script("return document.body.innerText"))


def wait(driver, script, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for: {script}")


def fleet_event(seq):
    event = {"sourceType": "citadel", "eventType": "bench.tick", "level": "INFO",
             "message": f"bench-{seq}", "node": "sim-0000"}
    return {"type": "bench.tick", "node": "sim-0000", "event": json.dumps(event)}


# Installed in the page: a MutationObserver noting when each bench row
# lands, and the baseline poller (every 3 s, the API's newest events).
OBSERVE = """
window.__dom = {}; window.__polled = {};
const seen = (text) => { const m = /^bench-(\\d+)$/.exec(text); return m ? Number(m[1]) : null; };
new MutationObserver((records) => {
  const at = performance.timeOrigin + performance.now();
  for (const record of records) for (const node of record.addedNodes) {
    const cell = node.querySelector?.('td.message');
    const seq = cell && seen(cell.textContent);
    if (seq !== null && !(seq in window.__dom)) window.__dom[seq] = at;
  }
}).observe(document.getElementById('main'), { childList: true, subtree: true });
window.__poller = setInterval(async () => {
  const answer = await fetch('/v1/events?eventType=bench.tick&limit=200').then((r) => r.json());
  const at = performance.timeOrigin + performance.now();
  const box = document.createElement('div');
  for (const event of answer.events) {
    const seq = seen(event.message);
    if (seq !== null && !(seq in window.__polled)) { window.__polled[seq] = at; box.append(event.message); }
  }
}, arguments[0]);
return true;
"""


def event_latency(driver, r, first, count, gap):
    """Write `count` events `gap()` s apart; their (DOM, poller) latencies, ms."""
    sent = {}
    for seq in range(first, first + count):
        sent[seq] = now_ms()
        r.xadd("citadel:v1:events", fleet_event(seq))
        pause = gap(seq)
        if pause is None:
            wait(driver, f"return {seq} in window.__dom")
            time.sleep(random.uniform(0.3, 0.5))
        else:
            time.sleep(pause)
    last = first + count - 1
    wait(driver, f"return {last} in window.__dom && {last} in window.__polled", within=60)
    dom = driver.execute_script("return window.__dom")
    polled = driver.execute_script("return window.__polled")
    return ([dom[str(seq)] - at for seq, at in sent.items()],
            [polled[str(seq)] - at for seq, at in sent.items()])


def stats(values):
    return {"p50": statistics.median(values), "p99": percentile(values, 0.99), "n": len(values)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="citadel-dashboard-"))
    redis_port, api_port = free_port(), free_port()
    server, r = start_redis(workdir, redis_port)
    monitor = start_monitor(args.citadel, workdir, redis_port, api_port, "--api-key", KEY)
    base = f"http://127.0.0.1:{api_port}"
    nodes = [f"sim-{index:04d}" for index in range(args.nodes)]
    stop = threading.Event()
    driver = None
    summary = {"nodes": args.nodes, "gpus": args.gpus, "poll_ms": POLL_MS}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/v1/health", timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        pipe = r.pipeline(transaction=False)
        for node in nodes:
            pipe.xadd("node:status:stream", {"nodeId": node, "timestamp": "now", "status": "online",
                                             "payload": status_message(node, args.gpus)})
        pipe.execute()

        def beat():
            while not stop.is_set():
                pipe = r.pipeline(transaction=False)
                for node in nodes:
                    pipe.xadd("citadel:v1:heartbeats", {"node": node, "at": int(now_ms()), "intervalMs": 10000,
                                                        "inFlight": 0}, maxlen=10000, approximate=True)
                pipe.execute()
                stop.wait(5)

        threading.Thread(target=beat, daemon=True).start()
        request = urllib.request.Request(f"{base}/v1/nodes", headers={"x-api-key": KEY})
        deadline = time.time() + 60
        while len(json.loads(urllib.request.urlopen(request).read())["nodes"]) < args.nodes:
            if time.time() > deadline:
                raise RuntimeError("the monitor did not register the simulated fleet")
            time.sleep(0.2)

        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions", "--window-size=1280,800"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.get(f"{base}/login")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "form.login-form button").click()
        ready(driver)

        # Bytes for a page load: cold (cache cleared), then revalidated.
        transferred = """
            const entries = [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')];
            return entries.reduce((sum, entry) => sum + (entry.transferSize || 0), 0);"""
        summary["bytes"] = {}
        for page in ("/", "/nodes"):
            driver.execute_cdp_cmd("Network.clearBrowserCache", {})
            driver.get(base + page)
            ready(driver)
            cold = driver.execute_script(transferred)
            driver.get(base + page)
            ready(driver)
            warm = driver.execute_script(transferred)
            api = driver.execute_script(
                "return performance.getEntriesByType('resource').filter((e) => e.name.includes('/v1/'))"
                ".reduce((sum, e) => sum + e.transferSize, 0)")
            summary["bytes"][page] = {"cold": cold, "warm": warm, "api": api}

        # /nodes: first render of the whole fleet, five loads.
        first, script = [], []
        for _ in range(5):
            driver.get(base + "/nodes")
            ready(driver)
            measure = driver.execute_script(
                "const m = performance.getEntriesByName('citadel:render')[0]; return [m.startTime + m.duration, m.duration];")
            first.append(measure[0])
            script.append(measure[1])
        rows = driver.execute_script("return document.querySelectorAll('tr[data-node]').length")
        assert rows == args.nodes, rows
        summary["nodes_first_render_ms"] = statistics.median(first)
        summary["nodes_render_script_ms"] = statistics.median(script)

        # One live update at a time: a node's new status, its row redrawn.
        updates = []
        for round_ in range(20):
            before = driver.execute_script("return performance.getEntriesByName('citadel:update').length")
            node = nodes[random.randrange(len(nodes))]
            message = json.loads(status_message(node, args.gpus))
            message["status"]["gpu"][0]["temperature_celsius"] = 60 + round_
            r.xadd("node:status:stream", {"nodeId": node, "timestamp": "now", "status": "online",
                                          "payload": json.dumps(message)})
            wait(driver, f"return performance.getEntriesByName('citadel:update').length > {before}")
            updates.append(driver.execute_script(
                "const all = performance.getEntriesByName('citadel:update'); return all[all.length - 1].duration"))
            time.sleep(0.3)
        summary["nodes_update_script_ms"] = stats(updates)

        # Event -> DOM on /events, with the polling baseline in the same page.
        driver.get(base + "/events")
        ready(driver)
        wait(driver, "return document.getElementById('live').textContent === 'live'")
        driver.execute_script(OBSERVE, POLL_MS)
        dom, polled = event_latency(driver, r, 0, args.updates, lambda _: None)
        summary["event_dom_isolated"] = stats(dom)
        summary["event_polled_isolated"] = stats(polled)
        dom, polled = event_latency(driver, r, 100000, args.updates, lambda _: 0.1)
        summary["event_dom_10hz"] = stats(dom)
        summary["event_polled_10hz"] = stats(polled)
    finally:
        stop.set()
        if driver is not None:
            driver.quit()
        monitor.terminate()
        monitor.wait(30)
        server.terminate()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

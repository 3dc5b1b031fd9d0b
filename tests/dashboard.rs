//! The fleet dashboard in a real headless Chromium (Debian's chromium
//! driven through chromedriver), against a real `citadel monitor` fed by
//! real `citadel work` nodes (one with a fake `nvidia-smi`: CI has no GPU)
//! and simulated ones: login and its refusals, every page without console
//! errors, a node killed and a GPU going hot shown without a reload, an
//! alert closed from the page, filters, a hostile event message kept inert,
//! updates coalesced, and the live stream resuming across a monitor
//! restart. Screenshots of every page land in `target/screenshots/`.

use std::path::Path;
use std::time::{Duration, Instant};

use citadel_runtime::config::Config;
use citadel_tests::*;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(30);
const KEY: &str = "dashboard-key-0123456789";
const INGEST_KEY: &str = "dashboard-ingest-0123456789";
const PAGES: [&str; 7] = [
    "/",
    "/nodes",
    "/nodes/gpu-node",
    "/jobs",
    "/jobs/echo",
    "/alerts",
    "/events",
];

/// The text elements whose colour contrasts less than WCAG AA with their
/// background (4.5:1; 3:1 for large or bold text): `[]` when all read well.
const CONTRAST: &str = r#"
const rgb = (text) => (text.match(/[\d.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const colour = rgb(getComputedStyle(el).backgroundColor);
    if (colour.length === 3 || colour[3] > 0) return colour.slice(0, 3);
  }
  return [255, 255, 255];
};
const poor = [];
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') || !el.offsetParent) continue;
  if (![...el.childNodes].some((node) => node.nodeType === 3 && node.textContent.trim())) continue;
  const style = getComputedStyle(el);
  const [a, b] = [luminance(rgb(style.color)), luminance(background(el))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && Number(style.fontWeight) >= 700);
  if (ratio < (large ? 3 : 4.5)) poor.push(`${el.tagName}.${el.className}: ${el.textContent.trim().slice(0, 30)} ${ratio.toFixed(2)}`);
}
return poor;
"#;

/// A monitor on a port of its own (so it can come back on it) with its
/// database in `db`.
fn monitor_config(redis: &RedisServer, db: &Path, port: u16) -> Config {
    let mut config = Config {
        redis_url: Some(redis.url()),
        ..Config::default()
    };
    config.monitor.addr = format!("127.0.0.1:{port}").parse().unwrap();
    config.monitor.db = db.to_path_buf();
    config.monitor.consumer = Some("dashboard-monitor".into());
    config.monitor.node_grace_ms = 100;
    config.monitor.api_keys = vec![KEY.into()];
    config.monitor.ingest_keys = vec![INGEST_KEY.into()];
    config
}

/// A fleet node reporting its status every second.
fn node_config(redis: &RedisServer, id: &str) -> Config {
    let mut config = fleet_node_config(redis, id);
    config.telemetry.status_interval_s = 1;
    config
}

fn client() -> reqwest::Client {
    citadel_transports::http::client(Duration::from_secs(10)).unwrap()
}

async fn api(base: &str, path: &str) -> Value {
    let response = client()
        .get(format!("{base}{path}"))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("the monitor answers");
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn post_event(base: &str, event: Value) {
    let response = client()
        .post(format!("{base}/v1/events"))
        .header("x-api-key", INGEST_KEY)
        .json(&event)
        .send()
        .await
        .expect("the monitor answers");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
}

/// Log in through the form, landing on `next`.
async fn log_in(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/login")).await;
    browser.type_into("#key", KEY).await;
    browser.click("form.login-form button[type=submit]").await;
    browser.ready().await;
}

/// Mark the document, to show later that it was never reloaded.
async fn mark(browser: &Browser) {
    browser.eval("window.__sameDocument = true; return true", vec![]).await;
}

async fn assert_not_reloaded(browser: &Browser) {
    let same = browser.eval("return window.__sameDocument === true", vec![]).await;
    assert_eq!(same, json!(true), "the page was reloaded");
}

/// Follow an in-page link (no reload) and wait for its page.
async fn navigate(browser: &Browser, css: &str) {
    browser
        .eval(
            "document.getElementById('main').dataset.ready = 'false'; return true",
            vec![],
        )
        .await;
    browser.click(css).await;
    browser.ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_page_asks_to_log_in_and_every_api_call_is_refused() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let monitor = WorkerProcess::start_with_env(
        &monitor_config(&redis, &db.path().join("m.sqlite"), free_port()),
        "monitor",
        &[],
    );
    let base = monitor.monitor_url();
    let browser = Browser::start(1280, 800).await;

    for page in PAGES {
        browser.goto(&format!("{base}{page}")).await;
        let landed = browser.path().await;
        assert!(landed.starts_with("/login?next="), "{page} went to {landed}");
        let next = browser
            .eval("return document.querySelector('input[name=next]').value", vec![])
            .await;
        assert_eq!(next, json!(page), "the login form returns to the page asked for");
    }
    browser.screenshot("login").await;
    // The API refuses the browser (no session) and anyone without a key.
    let statuses = browser
        .eval(
            "const paths = arguments[0];
             return Promise.all(paths.map((path) => fetch(path).then((r) => r.status)));",
            vec![json!([
                "/v1/status/summary",
                "/v1/status/jobs",
                "/v1/nodes",
                "/v1/nodes/x",
                "/v1/events",
                "/v1/alerts",
                "/v1/stream",
                "/metrics"
            ])],
        )
        .await;
    assert_eq!(statuses, json!([401, 401, 401, 401, 401, 401, 401, 401]));
    let close = client()
        .post(format!("{base}/v1/alerts/1/close"))
        .json(&json!({ "reason": "no" }))
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 401);

    // A wrong key, or an ingest key, is told so and stays on the form.
    for wrong in ["not-the-key-0123456789", INGEST_KEY] {
        browser.goto(&format!("{base}/login?next=/alerts")).await;
        browser.type_into("#key", wrong).await;
        browser.click("form.login-form button[type=submit]").await;
        browser
            .wait_for(
                Duration::from_secs(10),
                "the refusal",
                "const error = document.getElementById('login-error');
                 return error && !error.hidden && error.textContent.includes('not an API key')",
            )
            .await;
    }
    // The right key: back to the page asked for, the key nowhere the page
    // can read, and the session cookie strict and out of scripts' reach.
    browser.type_into("#key", KEY).await;
    browser.click("form.login-form button[type=submit]").await;
    browser.ready().await;
    assert_eq!(browser.path().await, "/alerts");
    let cookie = browser.eval("return document.cookie", vec![]).await;
    assert!(!cookie.as_str().unwrap().contains("citadel_session"), "{cookie}");
    let stored = browser
        .eval(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + location.href",
            vec![],
        )
        .await;
    assert!(!stored.as_str().unwrap().contains(KEY), "the key leaked: {stored}");
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|cookie| cookie.name() == "citadel_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    let summary = browser
        .eval("return fetch('/v1/status/summary').then((r) => r.status)", vec![])
        .await;
    assert_eq!(summary, json!(200), "the session opens the API to the page");

    // Logging out ends the session: the pages ask again.
    browser.click("form.logout button").await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "the login page",
            "return location.pathname === '/login'",
        )
        .await;
    browser.goto(&format!("{base}/nodes")).await;
    assert!(browser.path().await.starts_with("/login"));
    let again = browser
        .eval("return fetch('/v1/nodes').then((r) => r.status)", vec![])
        .await;
    assert_eq!(again, json!(401));
    let headers = client().get(format!("{base}/login")).send().await.unwrap();
    let csp = headers.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().all(|error| error.contains("401")),
        "console errors other than the refusals asked for: {errors:?}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_live_fleet_without_reloading() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = monitor_config(&redis, &db.path().join("m.sqlite"), port);
    let mut monitor = WorkerProcess::start_with_env(&config, "monitor", &[]);
    let base = monitor.monitor_url();

    // Two real nodes (one with a GPU), and twenty simulated ones.
    let smi = FakeSmi::new(60);
    let mut gpu_config = node_config(&redis, "gpu-node");
    gpu_config.telemetry.nvidia_smi = smi.program().display().to_string();
    let _gpu_node = WorkerProcess::start(&gpu_config);
    let mut doomed = WorkerProcess::start(&node_config(&redis, "doomed-node"));
    let mut conn = redis.conn();
    let simulated = fleet_sim::simulate(&mut conn, "sim", 20, 8, 5_000);
    let _reporting = fleet_sim::KeepReporting::start(&redis.url(), simulated.clone(), 8, Duration::from_secs(5));
    for job in ["run-1", "run-2"] {
        enqueue(&mut conn, job, "echo", r#"{"hello":"dashboard"}"#);
    }
    eventually_some(SETTLE, "22 nodes and the echo jobs", || async {
        let nodes = api(&base, "/v1/nodes").await["nodes"].as_array().map_or(0, Vec::len);
        let jobs = api(&base, "/v1/status/jobs/echo").await;
        (nodes == 22 && jobs["lastDay"]["runs"] == 2).then_some(())
    })
    .await;

    let browser = Browser::start(1280, 800).await;
    log_in(&browser, &base).await;
    browser.console_errors().await;

    // Every page renders, with no console error, at a desk's width and a phone's.
    for (width, height, suffix) in [(1280, 800, ""), (390, 844, "-narrow")] {
        browser.client.set_window_size(width, height).await.unwrap();
        for page in PAGES {
            browser.goto(&format!("{base}{page}")).await;
            browser.ready().await;
            browser
                .wait_for(
                    Duration::from_secs(10),
                    "the live stream",
                    "return document.getElementById('live').textContent === 'live'",
                )
                .await;
            let name = match page {
                "/" => "overview".to_string(),
                page => page.trim_start_matches('/').replace('/', "-"),
            };
            browser.screenshot(&format!("{name}{suffix}")).await;
            let errors = browser.console_errors().await;
            assert!(errors.is_empty(), "{page} at {width}px logged errors: {errors:?}");
            let overflow = browser
                .eval(
                    "return document.documentElement.scrollWidth - window.innerWidth",
                    vec![],
                )
                .await;
            assert!(
                overflow.as_i64().unwrap() <= 0,
                "{page} at {width}px is wider than the window by {overflow}px"
            );
            // Readable contrast: every piece of text against what is behind it.
            let poor = browser.eval(CONTRAST, vec![]).await;
            assert_eq!(poor, json!([]), "{page} at {width}px: text below WCAG AA contrast");
        }
    }
    browser.client.set_window_size(1280, 800).await.unwrap();

    // /nodes: every node, filters that work, a GPU going hot recoloured live.
    browser.goto(&format!("{base}/nodes")).await;
    browser.ready().await;
    mark(&browser).await;
    let rows = browser
        .eval("return document.querySelectorAll('tr[data-node]').length", vec![])
        .await;
    assert_eq!(rows, json!(22));
    browser.type_into("#filter-tag", "rack-a").await;
    let visible = "return [...document.querySelectorAll('tr[data-node]')].filter((row) => !row.hidden).map((row) => row.dataset.node)";
    let shown = browser.eval(visible, vec![]).await;
    let expected: Vec<&String> = simulated.iter().step_by(2).collect();
    assert_eq!(shown, json!(expected), "the tag filter");
    assert!(
        browser.path().await.contains("tag=rack-a"),
        "the filter is in the address"
    );
    browser.type_into("#filter-tag", "").await;
    browser.type_into("#filter-model", "llama").await;
    let shown = browser.eval(visible, vec![]).await;
    assert_eq!(shown.as_array().unwrap().len(), 7, "the model filter: {shown}");
    browser.type_into("#filter-model", "").await;
    // Keyboard: the first Tab reaches the skip link; a column header sorts
    // with Enter.
    browser.goto(&format!("{base}/nodes")).await;
    browser.ready().await;
    mark(&browser).await;
    browser.press('\u{E004}').await;
    let focused = browser.eval("return document.activeElement.className", vec![]).await;
    assert_eq!(focused, json!("skip"), "the first Tab reaches the skip link");
    browser
        .eval(
            "document.querySelector('th[aria-sort] button').focus(); return true",
            vec![],
        )
        .await;
    browser.press('\u{E007}').await;
    let sorted = browser
        .eval(
            "return document.querySelector('th[data-key=name]').getAttribute('aria-sort')",
            vec![],
        )
        .await;
    assert_eq!(sorted, json!("descending"), "Enter on the sorted header reverses it");
    let first = browser
        .eval(
            "return document.querySelector('tbody tr[data-node]').dataset.node",
            vec![],
        )
        .await;
    assert_eq!(first, json!("sim-0019"));
    browser.press('\u{E007}').await;
    let sorted = browser
        .eval(
            "return document.querySelector('th[data-key=name]').getAttribute('aria-sort')",
            vec![],
        )
        .await;
    assert_eq!(
        sorted,
        json!("ascending"),
        "the focus stays on the header: Enter again sorts back"
    );
    // Live without asking: statuses keep arriving, the page fetches nothing.
    let fetches = "return performance.getEntriesByType('resource').filter((e) => e.name.includes('/v1/') && !e.name.includes('/v1/stream')).length";
    let asked = browser.eval(fetches, vec![]).await;
    let updates = browser
        .eval("return performance.getEntriesByName('citadel:update').length", vec![])
        .await;
    browser
        .wait_for(
            SETTLE,
            "two more live updates",
            &format!(
                "return performance.getEntriesByName('citadel:update').length >= {} + 2",
                updates
            ),
        )
        .await;
    assert_eq!(
        browser.eval(fetches, vec![]).await,
        asked,
        "the page asked the API while open"
    );
    let chip = "return document.querySelector('tr[data-node=\"gpu-node\"] .gpu')?.className";
    assert_eq!(browser.eval(chip, vec![]).await, json!("gpu cool"));
    smi.set_temperature(92);
    browser
        .wait_for(SETTLE, "the hot GPU recoloured", &format!("{chip} === 'gpu hot'"))
        .await;
    browser.screenshot("nodes-hot-gpu").await;

    // A node killed: its row turns down, live.
    doomed.kill9();
    browser
        .wait_for(
            SETTLE,
            "the killed node's row down",
            "return document.querySelector('tr[data-node=\"doomed-node\"]')?.dataset.state === 'down'",
        )
        .await;
    browser.eval("document.getElementById('filter-state').value = 'down'; document.getElementById('filter-state').dispatchEvent(new Event('change')); return true", vec![]).await;
    assert_eq!(
        browser.eval(visible, vec![]).await,
        json!(["doomed-node"]),
        "the state filter"
    );
    assert_not_reloaded(&browser).await;

    // The overview, reached by its link: the node down and its alert.
    navigate(&browser, "nav a[href='/']").await;
    assert_not_reloaded(&browser).await;
    let text = browser
        .eval("return document.getElementById('main').innerText", vec![])
        .await;
    let text = text.as_str().unwrap();
    assert!(text.contains("NODE_DOWN") && text.contains("doomed-node"), "{text}");
    assert!(text.contains("GPU_HOT"), "{text}");

    // /alerts: the GPU cools and its alert leaves the open list live; the
    // node's alert is closed from the page, with a reason.
    navigate(&browser, "nav a[href='/alerts']").await;
    let hot_rows =
        "[...document.querySelectorAll('#main tr[data-alert]')].some((row) => row.innerText.includes('GPU_HOT'))";
    assert_eq!(browser.eval(&format!("return {hot_rows}"), vec![]).await, json!(true));
    smi.set_temperature(65);
    browser
        .wait_for(
            SETTLE,
            "the cooled GPU's alert gone from the open ones",
            &format!("return !{hot_rows}"),
        )
        .await;
    let down: Vec<Value> = api(&base, "/v1/alerts?alertType=NODE_DOWN&status=OPEN").await["alerts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(down.len(), 1);
    let id = down[0]["id"].as_i64().unwrap();
    let row = format!("#main tr[data-alert='{id}']");
    browser
        .type_into(&format!("{row} input[name=reason]"), "decommissioned")
        .await;
    browser.click(&format!("{row} button[type=submit]")).await;
    browser
        .wait_for(
            SETTLE,
            "the closed alert gone from the open ones",
            &format!("return !document.querySelector(\"{row}\")"),
        )
        .await;
    let closed = api(&base, "/v1/alerts?alertType=NODE_DOWN&status=CLOSED").await;
    assert_eq!(closed["alerts"][0]["id"], json!(id));
    assert_eq!(closed["alerts"][0]["closeReason"], json!("decommissioned"));
    assert_not_reloaded(&browser).await;

    // /events: a hostile message is text; filters; the tail pauses.
    navigate(&browser, "nav a[href='/events']").await;
    let hostile = "<img src=x onerror=alert(1)>";
    post_event(
        &base,
        json!({ "eventType": "tenant.note", "level": "WARN", "message": hostile, "jobName": "<b>job</b>", "node": "<i>n</i>" }),
    )
    .await;
    browser
        .wait_for(
            SETTLE,
            "the hostile message, as text",
            "return [...document.querySelectorAll('#main td.message')].some((cell) => cell.textContent === '<img src=x onerror=alert(1)>')",
        )
        .await;
    let injected = browser
        .eval(
            "return document.querySelectorAll('#main img, #main b, #main i').length",
            vec![],
        )
        .await;
    assert_eq!(injected, json!(0), "markup from an event became elements");
    assert!(!browser.dialog_open().await, "the hostile message ran a script");
    browser.screenshot("events-hostile").await;
    browser.type_into("#filter-event-type", "tenant.note").await;
    browser
        .eval(
            "document.getElementById('filter-event-type').dispatchEvent(new Event('change')); return true",
            vec![],
        )
        .await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "only tenant.note events",
            "const types = [...document.querySelectorAll('#main tbody tr td.mono')].map((cell) => cell.textContent);
             return types.length === 1 && types[0] === 'tenant.note'",
        )
        .await;
    assert!(browser.path().await.contains("eventType=tenant.note"));
    browser.click("#tail-pause").await;
    post_event(
        &base,
        json!({ "eventType": "tenant.note", "level": "INFO", "message": "while paused" }),
    )
    .await;
    browser
        .wait_for(
            SETTLE,
            "the waiting count",
            "return document.querySelector('.tail-bar [role=status]').textContent.includes('1 new')",
        )
        .await;
    let rows = browser
        .eval("return document.querySelectorAll('#main tbody tr').length", vec![])
        .await;
    assert_eq!(rows, json!(1), "nothing shown while paused");
    browser.click("#tail-pause").await;
    let rows = browser
        .eval("return document.querySelectorAll('#main tbody tr').length", vec![])
        .await;
    assert_eq!(rows, json!(2), "what waited is shown on resume");

    // Updates coalesce: a burst of 60 events makes at most 4 redraws a second.
    browser
        .eval("performance.clearMeasures('citadel:update'); return true", vec![])
        .await;
    let started = Instant::now();
    for index in 0..60 {
        post_event(
            &base,
            json!({ "eventType": "tenant.note", "message": format!("burst {index}") }),
        )
        .await;
    }
    browser
        .wait_for(
            SETTLE,
            "the whole burst",
            "return [...document.querySelectorAll('#main td.message')].some((cell) => cell.textContent === 'burst 59')",
        )
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let redraws = browser
        .eval("return performance.getEntriesByName('citadel:update').length", vec![])
        .await
        .as_f64()
        .unwrap();
    assert!(
        redraws >= 1.0 && redraws <= 4.0 * seconds + 1.0,
        "{redraws} redraws in {seconds:.2} s"
    );

    // The monitor restarts: the page says so, and the events written
    // meanwhile arrive when the stream resumes (Last-Event-ID), unreloaded.
    monitor.kill9();
    browser
        .wait_for(
            SETTLE,
            "the reconnecting indicator",
            "return document.getElementById('live').textContent === 'reconnecting'",
        )
        .await;
    let event = citadel_transports::fleet::FleetEvent::new(
        "tenant.note",
        citadel_transports::fleet::Level::Info,
        "gpu-node",
        "written while the monitor was down",
    );
    let mut xadd = redis::cmd("XADD");
    xadd.arg(citadel_transports::fleet::EVENTS_STREAM).arg("*");
    for (field, value) in event.entry_fields() {
        xadd.arg(field).arg(value);
    }
    let _: String = xadd.query(&mut conn).unwrap();
    let _monitor = WorkerProcess::start_with_env(&config, "monitor", &[]);
    browser
        .wait_for(
            SETTLE,
            "the live indicator again",
            "return document.getElementById('live').textContent === 'live'",
        )
        .await;
    browser
        .wait_for(
            SETTLE,
            "the event written while the monitor was down",
            "return [...document.querySelectorAll('#main td.message')].some((cell) => cell.textContent === 'written while the monitor was down')",
        )
        .await;
    assert_not_reloaded(&browser).await;
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        .filter(|error| !error.contains("/v1/stream"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The GPU node's page after all this: its hot spell in the history
    // (the README's screenshot).
    browser.client.set_window_size(1280, 1500).await.unwrap();
    browser.goto(&format!("{base}/nodes/gpu-node?range=15m")).await;
    browser.ready().await;
    browser.screenshot("node-history").await;
    browser.close().await;
}

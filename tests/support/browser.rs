//! A real headless Chromium for the dashboard's tests and benchmark:
//! Debian's `chromium` driven through `chromedriver` (package
//! `chromium-driver`, installed by `scripts/test`) over WebDriver with
//! fantoccini. Each [`Browser`] runs its own driver on a free loopback
//! port, in a process group of its own so the browser goes with it.
//! Console messages are read from the driver's browser log; screenshots
//! go to `target/screenshots/`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The driver and browser Debian installs.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A browser window on a page.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
}

/// `POST /session/{id}/se/log`: chromedriver's browser console log.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

impl Browser {
    /// A fresh headless Chromium at `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: the dashboard tests need Debian's chromium and chromium-driver \
                 (scripts/test installs them: apt-get install chromium chromium-driver)"
            );
        }
        let port = crate::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let webdriver = format!("http://127.0.0.1:{port}");
        let status = format!("{webdriver}/status");
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::try_get(&status).await.is_none() {
            assert!(Instant::now() < deadline, "chromedriver did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a chromium session");
        client.set_window_size(width, height).await.expect("window size");
        Browser { client, driver }
    }

    /// Go to `url` (a full load).
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("goto {url}: {err}"));
    }

    /// The current path and query.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|err| panic!("script failed: {err}\n{script}"))
    }

    /// Wait until `script` returns something truthy; returns it.
    pub async fn wait_for(&self, within: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(script, vec![]).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false)) && value != json!(0) && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText.slice(0, 3000)", vec![]).await;
                panic!("the page did not show {what} within {within:?}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the dashboard has rendered its page.
    pub async fn ready(&self) {
        self.wait_for(
            Duration::from_secs(20),
            "a rendered page",
            "return document.getElementById('main')?.dataset.ready === 'true'",
        )
        .await;
    }

    /// Click the element `css` names.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Press and release `key` (a character, or one of WebDriver's key
    /// codes: `\u{E004}` Tab, `\u{E007}` Enter) where the focus is.
    pub async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(keys).await.expect("press a key");
    }

    /// Type `text` into the element `css` names.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"));
        element.clear().await.expect("clear");
        element.send_keys(text).await.expect("type");
    }

    /// The console's messages since last asked: (level, message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("the browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                (
                    entry["level"].as_str().unwrap_or_default().to_string(),
                    entry["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Console errors since last asked.
    pub async fn console_errors(&self) -> Vec<String> {
        self.console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, message)| message)
            .collect()
    }

    /// Save a screenshot as `target/screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = crate::workspace().join("target/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Whether a JavaScript dialog (`alert()`) is open.
    pub async fn dialog_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// End the session and the browser.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.kill();
    }

    fn kill(&mut self) {
        // The driver leads its group: chromium and its helpers go with it.
        let group = rustix::process::Pid::from_raw(self.driver.id() as i32);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

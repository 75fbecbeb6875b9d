#![allow(clippy::expect_used)] // a test and benchmark helper: failing loudly is the point

//! A headless Chromium driven over WebDriver (chromedriver), for the dashboard tests and benchmark.
//! Chromium and chromedriver come from Debian's packages (`scripts/test.sh` installs them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: tempfile::TempDir,
}

/// Where screenshots go: `<target dir>/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

impl Browser {
    pub async fn start() -> Self {
        for tool in ["chromedriver", "chromium"] {
            assert!(
                Command::new("which")
                    .arg(tool)
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed; scripts/test.sh installs it (apt-get install chromium chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1360,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "args": args, "binary": "/usr/bin/chromium" }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        std::fs::create_dir_all(screenshot_dir()).expect("screenshot dir");
        Self {
            client,
            driver,
            profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    /// The text of the first element matching `css`. The dashboard re-renders live, so an element
    /// can be replaced between finding and reading it: a stale element is simply looked up again.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(CmdError::Standard(e))
                    if e.error == ErrorStatus::StaleElementReference && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("text of `{css}`: {e}"),
            }
        }
    }

    /// The texts of every element matching `css`, read in one script so that a live re-render
    /// cannot leave a stale element between finding and reading.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .client
            .execute(
                "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText);",
                vec![json!(css)],
            )
            .await
            .unwrap_or_else(|e| panic!("read `{css}`: {e}"));
        serde_json::from_value(found).unwrap_or_else(|e| panic!("texts of `{css}`: {e}"))
    }

    /// Clicks the first element matching `css`. Like [`Browser::text`], a live re-render can
    /// replace the element between finding and clicking it: a stale element is looked up again
    /// (the click never reached the page, so it is not repeated).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(CmdError::Standard(e))
                    if e.error == ErrorStatus::StaleElementReference && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click `{css}`: {e}"),
            }
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("run script")
    }

    /// Polls `script` (a JS expression) until it is true.
    pub async fn until(&self, what: &str, script: &str) {
        if !self.try_until(script, WAIT).await {
            let shot = self.screenshot("failed-wait.png").await;
            panic!("the page never showed: {what} (screenshot: {})", shot.display());
        }
    }

    /// Polls `script` until it is true or `timeout` passes; whether it became true.
    pub async fn try_until(&self, script: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(&format!("return !!({script});")).await == Value::Bool(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed never closed its session, and killing chromedriver orphans the
        // browser: stop every process started with this session's profile directory first.
        let _ = Command::new("pkill").arg("-f").arg(self.profile.path()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! The web UI in a real browser: headless Chromium driven by chromedriver
//! (WebDriver, through fantoccini) loads shuckle's page, drains a block
//! service with its button and sees the status change, is refused when it
//! asks to terminate a fresh service, and leaves a screenshot behind.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test
//! prints one line naming the packages and skips, so that `cargo test
//! --workspace` passes on a machine without a browser; under CI (`CI=true`)
//! a missing browser is a failure.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use wire::EggsTime;
use wire::address::Address;
use wire::mac::{MacKey, SecretKey};
use wire::shuckle::{RegisterCdcReq, RegisterShardReq, ShuckleRequest};

const CHROMIUM_CANDIDATES: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const CHROMEDRIVER_CANDIDATES: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|path| path.exists())
}

/// Chromium and chromedriver, or `None` (after saying so) when the test
/// must skip. Panics under CI, where the browser must be there.
fn browser() -> Option<(PathBuf, PathBuf)> {
    if let (Some(chromium), Some(chromedriver)) = (find(CHROMIUM_CANDIDATES), find(CHROMEDRIVER_CANDIDATES)) {
        return Some((chromium, chromedriver));
    }
    let message = "the browser test needs Debian's chromium and chromium-driver \
                   (apt-get install -y chromium chromium-driver)";
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{message}; under CI they must be installed");
    }
    eprintln!("skipping: {message}");
    None
}

struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_chromedriver(chromedriver: &Path) -> Driver {
    // chromedriver cannot report a port it picked, so take a free one.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start chromedriver");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start listening on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, addr }
}

async fn connect(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1500,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("cannot open a chromium session through chromedriver")
}

/// Polls the text of the first element matching `css` until `accept` holds.
async fn wait_for_text(client: &Client, css: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && accept(&text)
        {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {css}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_drains_a_block_service() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let services: Vec<FakeBlockService> =
        (0..3u8).map(|i| FakeBlockService::start(SecretKey([0x40 + i * 17; 16]), Mode::Good)).collect();
    for (i, service) in services.iter().enumerate() {
        register(shuckle.udp, &service.key, service.addr.port(), 2, Some(&format!("storage-{i:02}")));
    }
    for service in &services {
        let id = service.id_hex();
        tokio::task::block_in_place(|| wait_for("the block service to be listed", || listed(shuckle.http, &id)));
    }
    let cluster_key = MacKey::new(&CLUSTER_KEY);
    for shard in [0u8, 1, 2] {
        let request = ShuckleRequest::RegisterShard(RegisterShardReq {
            shard,
            address: Address::from(SocketAddr::from(([127, 0, 0, 1], 22272 + u16::from(shard)))),
            time: EggsTime::now(),
        });
        tokio::task::block_in_place(|| udp_exchange(shuckle.udp, &request, Some(&cluster_key)));
    }
    let request = ShuckleRequest::RegisterCdc(RegisterCdcReq {
        address: Address::from(SocketAddr::from(([127, 0, 0, 1], 36137))),
        time: EggsTime::now(),
    });
    tokio::task::block_in_place(|| udp_exchange(shuckle.udp, &request, Some(&cluster_key)));
    let target = &services[1];
    let row = format!("tr[data-id='{}']", target.id_hex());

    let driver = start_chromedriver(&chromedriver);
    let client = connect(&driver, &chromium, &dir.path().join("chromium-profile")).await;
    client.goto(&format!("http://{}/", shuckle.http)).await.unwrap();
    assert_eq!(wait_for_text(&client, &format!("{row} td.status"), |t| t.contains("ok")).await.trim(), "ok");
    let page = client.source().await.unwrap();
    for service in &services {
        assert_no_key(&page, &service.key);
    }
    assert_no_key(&page, &CLUSTER_KEY);

    client.find(Locator::Css(&format!("{row} button.drain"))).await.unwrap().click().await.unwrap();
    wait_for_text(&client, &format!("{row} td.status"), |t| t.contains("drain")).await;
    let api = tokio::task::block_in_place(|| listed(shuckle.http, &target.id_hex())).unwrap();
    assert_eq!(api["status"], "drain");
    // The other services are untouched.
    let other = format!("tr[data-id='{}'] td.status", services[0].id_hex());
    assert_eq!(wait_for_text(&client, &other, |_| true).await.trim(), "ok");

    // Terminating a fresh service is refused, with the reason on the page.
    client.find(Locator::Css(&format!("{row} button.terminate"))).await.unwrap().click().await.unwrap();
    client.accept_alert().await.unwrap();
    let message = wait_for_text(&client, "#message", |t| t.contains("refusing")).await;
    assert!(message.contains("not stale"), "{message}");
    assert_eq!(wait_for_text(&client, &format!("{row} td.status"), |_| true).await.trim(), "drain");
    wait_for_text(&client, "#shards tbody", |t| t.contains("127.0.0.1:22274")).await;
    wait_for_text(&client, "#cdc tbody", |t| t.contains("127.0.0.1:36137")).await;

    let screenshot = client.screenshot().await.unwrap();
    let path = temp_path("shuckle-ui.png");
    std::fs::write(&path, &screenshot).unwrap();
    println!("screenshot of the shuckle UI: {}", path.display());
    client.close().await.unwrap();
}

//! The web UI in a real browser: headless Chromium driven by chromedriver
//! (WebDriver, through fantoccini) loads shuckle's page, is refused a drain
//! without the operator token and with a wrong one, enters the token, drains
//! a block service with its button and sees the status change, is refused
//! when it asks to terminate a fresh service, and leaves a screenshot behind.
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

/// Clicks the first element matching `css`, finding it again when the
/// page's refresh replaced it between the find and the click.
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let error = match client.find(Locator::Css(css)).await {
            Ok(element) => match element.click().await {
                Ok(()) => return,
                Err(error) => error,
            },
            Err(error) => error,
        };
        assert!(Instant::now() < deadline, "cannot click {css}: {error}");
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

    // Without the token, and with a wrong one, nothing changes.
    let drain = format!("{row} button.drain");
    click(&client, &drain).await;
    wait_for_text(&client, "#message", |t| t.contains("enter the operator token")).await;
    let enter_token = |token: String| {
        let client = client.clone();
        async move {
            client.find(Locator::Css("#operator-token")).await.unwrap().send_keys(&token).await.unwrap();
            click(&client, "#operator-save").await;
            wait_for_text(&client, "#operator-state", |t| t.contains("entered")).await;
        }
    };
    enter_token("0".repeat(32)).await;
    click(&client, &drain).await;
    wait_for_text(&client, "#message", |t| t.contains("wrong operator token")).await;
    assert_eq!(wait_for_text(&client, &format!("{row} td.status"), |_| true).await.trim(), "ok");
    assert_eq!(tokio::task::block_in_place(|| listed(shuckle.http, &target.id_hex())).unwrap()["status"], "ok");

    enter_token(shuckle.token.clone()).await;
    click(&client, &drain).await;
    wait_for_text(&client, &format!("{row} td.status"), |t| t.contains("drain")).await;
    // The token is kept out of the page and its address.
    assert!(!client.source().await.unwrap().contains(&shuckle.token), "the page shows the token");
    assert!(!client.current_url().await.unwrap().as_str().contains(&shuckle.token), "the token is in the URL");
    let api = tokio::task::block_in_place(|| listed(shuckle.http, &target.id_hex())).unwrap();
    assert_eq!(api["status"], "drain");
    // The other services are untouched.
    let other = format!("tr[data-id='{}'] td.status", services[0].id_hex());
    assert_eq!(wait_for_text(&client, &other, |_| true).await.trim(), "ok");

    // Terminating a fresh service is refused, with the reason on the page.
    click(&client, &format!("{row} button.terminate")).await;
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

/// The file browser in a real browser over a real cluster: clicks from
/// `/browse/` down to a file, sees its spans with every block's service,
/// host and state, downloads it through the page's link (bytes compared),
/// and sees the eden files page and the per-disk capacity tile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_browses_files_spans_and_downloads() {
    let Some((chromium, chromedriver)) = browser() else { return };
    let cluster = tokio::task::block_in_place(|| testsupport::Cluster::start(6));
    let scratch = tempfile::tempdir().unwrap();
    let data = testsupport::test_bytes((1 << 20) + 123, 77);
    let local = scratch.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    tokio::task::block_in_place(|| {
        cluster.ok(&["mkdir", "-p", "/docs/deep"]);
        cluster.ok(&["mkdir", "/docs/a <b>&"]);
        let local = local.to_str().unwrap();
        cluster.ok(&["put", local, "/docs/deep/", "--parity", "4+2", "--span-size", "262144"]);
        cluster.ok(&["put", local, "/docs/zz.bin"]);
    });

    let driver = start_chromedriver(&chromedriver);
    let profile = scratch.path().join("chromium-profile");
    let client = connect(&driver, &chromium, &profile).await;
    let base = format!("http://{}", cluster.shuckle_http());
    client.goto(&format!("{base}/")).await.unwrap();
    client.find(Locator::Css("#nav-files")).await.unwrap().click().await.unwrap();
    client.find(Locator::Css("tr[data-name='docs'] td.name a")).await.unwrap().click().await.unwrap();
    wait_for_text(&client, "#crumbs", |t| t.contains("docs")).await;
    // Sorted, names escaped (the odd name shows as text, not markup).
    let names = wait_for_text(&client, "#entries tbody", |t| t.contains("zz.bin")).await;
    let order: Vec<&str> = names.lines().map(|line| line.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(order, ["a", "deep/", "zz.bin"], "{names}");
    assert!(names.contains("a <b>&/"), "{names}");
    let row = wait_for_text(&client, "tr[data-name='zz.bin']", |_| true).await;
    assert!(row.contains("1.0 MiB") && row.contains("FILE"), "size and type: {row}");
    client.find(Locator::Css("tr[data-name='deep'] td.name a")).await.unwrap().click().await.unwrap();
    client.find(Locator::Css("tr[data-name='data.bin'] td.name a")).await.unwrap().click().await.unwrap();

    // The span view: 5 spans, four of 256 KiB with 4+2 blocks each and an
    // inline tail of 123 bytes (≤ INLINE_SPAN_BYTES_MAX, no blocks).
    let size = wait_for_text(&client, "#size", |t| t.contains("bytes")).await;
    assert!(size.starts_with(&data.len().to_string()), "{size}");
    let spans = client.find_all(Locator::Css("#spans tr.span")).await.unwrap();
    assert_eq!(spans.len(), 5);
    let blocks = client.find_all(Locator::Css("#spans tr.block")).await.unwrap();
    assert_eq!(blocks.len(), 4 * 6);
    for block in &blocks {
        let state = block.find(Locator::Css("td.state")).await.unwrap().text().await.unwrap();
        assert_eq!(state.trim(), "ok");
        let service = block.find(Locator::Css("td.service")).await.unwrap().text().await.unwrap();
        assert!(service.starts_with("0x"), "{service}");
        let host = block.find(Locator::Css("td.host")).await.unwrap().text().await.unwrap();
        assert!(!host.trim().is_empty() && host.trim() != "?", "{host}");
        let addr = block.find(Locator::Css("td.addr")).await.unwrap().text().await.unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    }

    // Download through the page's link; the bytes come back as hex.
    let href = client.find(Locator::Css("#download")).await.unwrap().attr("href").await.unwrap().unwrap();
    assert!(href.ends_with("/download/docs/deep/data.bin"), "{href}");
    let script = "const [url, done] = arguments;\
        fetch(url).then(r => r.arrayBuffer()).then(b => {\
          const bytes = new Uint8Array(b); let hex = '';\
          for (let i = 0; i < bytes.length; i++) hex += bytes[i].toString(16).padStart(2, '0');\
          done(hex); }).catch(e => done('error: ' + e));";
    let downloaded = client.execute_async(script, vec![serde_json::json!(href)]).await.unwrap();
    let hex = downloaded.as_str().unwrap();
    let expected: String = data.iter().map(|byte| format!("{byte:02x}")).collect();
    assert!(hex == expected, "downloaded {} hex digits, expected {}", hex.len(), expected.len());

    // Eden files of each shard; capacity counts the one disk once.
    client.find(Locator::Css("#nav-eden")).await.unwrap().click().await.unwrap();
    let sections = client.find_all(Locator::Css("section.shard-eden")).await.unwrap();
    assert_eq!(sections.len(), 2, "one section per shard");
    client.goto(&format!("{base}/")).await.unwrap();
    let summary = wait_for_text(&client, "#summary", |t| t.contains("DISKS") || t.contains("Disks")).await;
    assert!(summary.contains("Disks\n1") || summary.contains("DISKS\n1"), "{summary}");

    let screenshot = client.screenshot().await.unwrap();
    let path = temp_path("shuckle-browse.png");
    std::fs::write(&path, &screenshot).unwrap();
    println!("screenshot of the file browser: {}", path.display());
    client.close().await.unwrap();
}

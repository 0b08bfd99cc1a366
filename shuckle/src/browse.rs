//! The file browser of the web UI: shuckle acting as an eggsfs client
//! (through the `client` library, without its CLI feature) with the shards'
//! addresses it already knows.
//!
//! - `GET /browse/PATH`: a directory's entries sorted by name, with type,
//!   size, mtime (ISO-8601, UTC) and inode; a file's size, mtime, download
//!   link and spans, each block with its block service, host, address and
//!   state (ok, drain, terminal, stale, or unknown to shuckle);
//! - `GET /download/PATH`: the file's bytes, streamed as they are read and
//!   checked (never buffered whole); a read that fails midway aborts the
//!   response, so a truncated download is never mistaken for the file;
//! - `GET /eden`: each shard's eden files (being written, or left by a
//!   failed write) with their deadlines;
//! - `GET /api/capacity`: capacity with each disk counted once
//!   ([`client::capacity`]), which the registry page's tiles show.
//!
//! Pages are plain server-rendered HTML; every name from the filesystem is
//! escaped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use client::Client;
use client::capacity::{self, ServiceSpace};
use client::client::{Addresses, FileSpanBody, Stat};
use client::path::EggsPath;
use client::udp::{ClientOptions, DatagramClient};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;
use wire::limits::SHARD_COUNT;
use wire::{BlockServiceId, EggsTime, InodeId, InodeType};

use crate::registry::Status;
use crate::service::Shuckle;

/// Bytes of a download between the reader and the HTTP body.
const DOWNLOAD_PIPE_BYTES: usize = 1 << 20;
/// Bytes per body chunk.
const DOWNLOAD_CHUNK_BYTES: usize = 64 << 10;
/// Eden files listed per shard at most (the page says when there are more).
const EDEN_PER_SHARD_MAX: usize = 1000;
/// Span pages fetched for one file page at most.
const SPAN_PAGES_MAX: usize = 10_000;

pub fn routes() -> Router<Arc<Shuckle>> {
    Router::new()
        .route("/browse", get(|| async { Redirect::permanent("/browse/") }))
        .route("/browse/", get(browse_root))
        .route("/browse/{*path}", get(browse))
        .route("/download/{*path}", get(download))
        .route("/eden", get(eden))
        .route("/api/capacity", get(capacity_json))
        .route("/api/awaiting_migration", get(awaiting_migration_json))
}

/// Shuckle's own datagram client, made on first use.
static DATAGRAMS: OnceCell<DatagramClient> = OnceCell::const_new();

/// A client with the shard addresses shuckle knows now.
async fn cluster_client(shuckle: &Shuckle) -> Result<Client, Response> {
    let udp = DATAGRAMS
        .get_or_try_init(|| async { DatagramClient::bind_any(ClientOptions::default()) })
        .await
        .map_err(|error| page_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot open a socket: {error}")))?
        .clone();
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut addresses = Addresses { shuckle: unknown, shards: vec![unknown; SHARD_COUNT], cdc: unknown };
    {
        let registry = shuckle.registry();
        for (shard, record) in registry.shards_from(0) {
            if let Some(slot) = addresses.shards.get_mut(shard as usize) {
                *slot = record.addr;
            }
        }
        if let Some(cdc) = registry.cdc() {
            addresses.cdc = cdc.addr;
        }
    }
    Ok(Client::with_addresses(udp, addresses))
}

// ---- HTML ----

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path component for a URL.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn url_of(prefix: &str, components: &[String]) -> String {
    let mut url = prefix.to_owned();
    for component in components {
        url.push('/');
        url.push_str(&encode_component(component));
    }
    if components.is_empty() {
        url.push('/');
    }
    url
}

const STYLE: &str = "\
body{margin:0;font:14px/1.45 system-ui,sans-serif;color:#1d2330;background:#f6f7f9}\
header{display:flex;gap:18px;align-items:baseline;padding:16px 28px;background:#fff;border-bottom:1px solid #e3e6ec}\
header h1{margin:0;font-size:19px}header a{color:#2952cc;text-decoration:none}\
main{padding:18px 28px 40px;max-width:1500px}\
section{background:#fff;border:1px solid #e3e6ec;border-radius:8px;margin-bottom:18px;overflow:hidden}\
section h2{margin:0;padding:10px 16px;font-size:15px;border-bottom:1px solid #e3e6ec}\
table{width:100%;border-collapse:collapse}th,td{padding:6px 12px;text-align:left;border-bottom:1px solid #e3e6ec;white-space:nowrap}\
th{font-size:12px;color:#6b7384;background:#fafbfc}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.mono{font-family:ui-monospace,monospace;font-size:12.5px}.muted{color:#6b7384}\
tr.span td{background:#f3f5fa;font-weight:600}tr.block td:first-child{padding-left:32px}\
.crumbs a{color:#2952cc}.empty{padding:12px 16px;color:#6b7384}\
.pill{display:inline-block;padding:0 8px;border-radius:999px;font-size:12px;font-weight:600}\
.ok{color:#1f7a3f;background:#e3f4e8}.drain{color:#8a5a00;background:#fdf1d8}\
.terminal,.unknown{color:#9b1c1c;background:#fbe4e4}.stale{color:#6d28d9;background:#efe7fd}\
a.button{display:inline-block;margin:10px 16px;padding:4px 12px;border:1px solid #c9ced8;border-radius:5px;color:#1d2330;text-decoration:none}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · eggsfs</title><style>{STYLE}</style></head>\
         <body><header><h1>eggsfs</h1><a href=\"/\">Registry</a><a href=\"/browse/\" id=\"nav-files\">Files</a>\
         <a href=\"/eden\" id=\"nav-eden\">Eden files</a></header><main>{body}</main></body></html>",
        escape(title)
    ))
}

fn page_error(status: StatusCode, text: &str) -> Response {
    (
        status,
        page(
            "error",
            &format!("<section><h2>Error</h2><p class=\"empty\" id=\"error\">{}</p></section>", escape(text)),
        ),
    )
        .into_response()
}

fn client_error(path: &str, error: client::ClientError) -> Response {
    let status = match &error {
        client::ClientError::NotFound { .. } | client::ClientError::NotADirectory { .. } => StatusCode::NOT_FOUND,
        client::ClientError::BadPath { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    page_error(status, &format!("{path}: {error}"))
}

fn iso(time: EggsTime) -> String {
    time.human_seconds()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn breadcrumbs(components: &[String]) -> String {
    let mut out = String::from("<a href=\"/browse/\">/</a>");
    for index in 0..components.len() {
        out.push_str(&format!(
            "<a href=\"{}\">{}</a>{}",
            url_of("/browse", &components[..=index]),
            escape(&components[index]),
            if index + 1 < components.len() { "/" } else { "" }
        ));
    }
    out
}

// ---- pages ----

async fn browse_root(State(shuckle): State<Arc<Shuckle>>) -> Response {
    browse_path(&shuckle, "/").await
}

async fn browse(State(shuckle): State<Arc<Shuckle>>, Path(path): Path<String>) -> Response {
    browse_path(&shuckle, &format!("/{path}")).await
}

async fn browse_path(shuckle: &Shuckle, text: &str) -> Response {
    let client = match cluster_client(shuckle).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let path = match EggsPath::parse(text) {
        Ok(path) => path,
        Err(error) => return client_error(text, error),
    };
    let inode = match client.resolve_path(&path).await {
        Ok(inode) => inode,
        Err(error) => return client_error(text, error),
    };
    let result = if inode.inode_type() == Some(InodeType::Directory) {
        directory_page(&client, &path, inode).await
    } else {
        file_page(shuckle, &client, &path, inode).await
    };
    result.unwrap_or_else(|error| client_error(text, error))
}

async fn directory_page(client: &Client, path: &EggsPath, dir: InodeId) -> Result<Response, client::ClientError> {
    let mut entries = client.ls_dir(dir, EggsTime::ZERO, 0).await?;
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut stats = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(64) {
        let mut tasks = Vec::new();
        for entry in chunk {
            let client = client.clone();
            let inode = entry.inode.without_owning();
            tasks.push(tokio::spawn(async move { client.stat(inode).await.ok() }));
        }
        for task in tasks {
            stats.push(task.await.ok().flatten());
        }
    }
    let mut rows = String::new();
    for (entry, stat) in entries.iter().zip(stats) {
        let inode = entry.inode.without_owning();
        let mut components = path.components().to_vec();
        components.push(entry.name.clone());
        let is_dir = inode.inode_type() == Some(InodeType::Directory);
        let (size, mtime) = match &stat {
            Some(Stat::File { size, mtime }) => {
                (format!("<span title=\"{size} bytes\">{}</span>", human(*size)), iso(*mtime))
            }
            Some(Stat::Directory { mtime, .. }) => ("—".to_owned(), iso(*mtime)),
            None => ("?".to_owned(), "?".to_owned()),
        };
        rows.push_str(&format!(
            "<tr data-name=\"{name}\"><td class=\"name\"><a href=\"{url}\">{name}{slash}</a></td><td class=\"type\">{kind}</td>\
             <td class=\"num size\">{size}</td><td class=\"mtime\">{mtime}</td><td class=\"mono inode\">{inode}</td></tr>",
            name = escape(&entry.name),
            url = url_of("/browse", &components),
            slash = if is_dir { "/" } else { "" },
            kind = inode.inode_type().map_or("UNKNOWN", InodeType::name),
        ));
    }
    let table = if entries.is_empty() {
        "<div class=\"empty\">This directory is empty.</div>".to_owned()
    } else {
        format!(
            "<table id=\"entries\"><thead><tr><th>Name</th><th>Type</th><th>Size</th><th>Modified (UTC)</th><th>Inode</th></tr></thead>\
             <tbody>{rows}</tbody></table>"
        )
    };
    let title = format!("/{}", path.components().join("/"));
    let body = format!(
        "<section><h2 class=\"crumbs\" id=\"crumbs\">{}</h2>{table}</section><p class=\"muted\">{} entries · directory {dir}</p>",
        breadcrumbs(path.components()),
        entries.len()
    );
    Ok(page(&title, &body).into_response())
}

/// A block service's state as the UI shows it, and its host.
fn service_state(shuckle: &Shuckle, id: BlockServiceId) -> (String, String) {
    let registry = shuckle.registry();
    let now = EggsTime::now();
    match registry.block_services_from(id).next().filter(|record| record.id() == id) {
        Some(record) => {
            let state = match record.status {
                Status::Terminal => "terminal",
                Status::Drain => "drain",
                Status::Ok if registry.is_stale(record, now) => "stale",
                Status::Ok => "ok",
            };
            (state.to_owned(), record.host.clone())
        }
        // Shuckle has never seen it.
        None => ("unknown".to_owned(), "?".to_owned()),
    }
}

async fn file_page(
    shuckle: &Shuckle,
    client: &Client,
    path: &EggsPath,
    inode: InodeId,
) -> Result<Response, client::ClientError> {
    let (size, mtime) = match client.stat(inode).await? {
        Stat::File { size, mtime } => (size, mtime),
        Stat::Directory { .. } => return Err(client::ClientError::Inconsistent(format!("{inode} is a directory"))),
    };
    let mut rows = String::new();
    let mut offset = 0u64;
    let mut spans = 0usize;
    let mut states: HashMap<BlockServiceId, (String, String)> = HashMap::new();
    for _ in 0..SPAN_PAGES_MAX {
        let page = client.fetch_spans(inode, offset).await?;
        for span in &page.spans {
            spans += 1;
            let (kind, layout) = match &span.body {
                FileSpanBody::Inline(_) => ("inline", String::new()),
                FileSpanBody::ZeroFill => ("zero-fill", String::new()),
                FileSpanBody::Blocks { storage_class, parity, blocks } => {
                    ("blocks", format!("{parity} · class {storage_class} · {} blocks", blocks.len()))
                }
            };
            rows.push_str(&format!(
                "<tr class=\"span\" data-offset=\"{offset}\"><td>span @ {offset}</td><td class=\"num\">{size}</td>\
                 <td>{kind}</td><td colspan=\"3\">{layout}</td><td class=\"mono\">crc {crc:08x}</td></tr>",
                offset = span.offset,
                size = span.size,
                crc = span.crc,
            ));
            if let FileSpanBody::Blocks { blocks, .. } = &span.body {
                for (index, block) in blocks.iter().enumerate() {
                    let (state, host) = states
                        .entry(block.block_service_id)
                        .or_insert_with(|| service_state(shuckle, block.block_service_id))
                        .clone();
                    let addr = if block.address.is_unknown() {
                        "?".to_owned()
                    } else {
                        block.address.socket_addr().to_string()
                    };
                    rows.push_str(&format!(
                        "<tr class=\"block\"><td class=\"mono block-id\">#{index} {}</td><td class=\"num\">{}</td>\
                         <td class=\"mono service\">{}</td><td class=\"host\">{}</td><td class=\"mono addr\">{addr}</td>\
                         <td class=\"state\"><span class=\"pill {state}\">{state}</span></td><td class=\"mono\">crc {:08x}</td></tr>",
                        block.block_id,
                        block.size.get(),
                        block.block_service_id,
                        escape(&host),
                        block.crc.get(),
                    ));
                }
            }
        }
        if page.next_offset == 0 || page.next_offset <= offset {
            break;
        }
        offset = page.next_offset;
    }
    let name = path.components().last().cloned().unwrap_or_default();
    let body = format!(
        "<section><h2 class=\"crumbs\" id=\"crumbs\">{crumbs}</h2>\
         <table id=\"file\"><tbody><tr><th>Inode</th><td class=\"mono\">{inode}</td></tr>\
         <tr><th>Size</th><td id=\"size\">{size} bytes ({human})</td></tr><tr><th>Modified (UTC)</th><td>{mtime}</td></tr>\
         <tr><th>Spans</th><td>{spans}</td></tr></tbody></table>\
         <a class=\"button\" id=\"download\" href=\"{download}\" download=\"{name}\">Download</a></section>\
         <section><h2>Spans and blocks</h2><table id=\"spans\"><thead><tr><th>Span / block</th><th>Size</th>\
         <th>Kind / service</th><th>Host</th><th>Address</th><th>State</th><th>CRC</th></tr></thead><tbody>{rows}</tbody></table></section>",
        crumbs = breadcrumbs(path.components()),
        human = human(size),
        mtime = iso(mtime),
        download = url_of("/download", path.components()),
        name = escape(&name),
    );
    Ok(page(&format!("/{}", path.components().join("/")), &body).into_response())
}

// ---- download ----

async fn download(State(shuckle): State<Arc<Shuckle>>, Path(text): Path<String>) -> Response {
    let text = format!("/{text}");
    let client = match cluster_client(&shuckle).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let path = match EggsPath::parse(&text) {
        Ok(path) => path,
        Err(error) => return client_error(&text, error),
    };
    let inode = match client.resolve_path(&path).await {
        Ok(inode) => inode,
        Err(error) => return client_error(&text, error),
    };
    let size = match client.stat(inode).await {
        Ok(Stat::File { size, .. }) => size,
        Ok(Stat::Directory { .. }) => return page_error(StatusCode::BAD_REQUEST, &format!("{text}: is a directory")),
        Err(error) => return client_error(&text, error),
    };
    let (mut source, pipe) = client::read::checked_pipe(DOWNLOAD_PIPE_BYTES);
    tokio::spawn(async move {
        let result = client::read::read_file(&client, inode, &mut source.writer, &|_| {}, &|_| {}).await;
        if let Err(error) = &result {
            tracing::warn!(%inode, %error, "download failed");
        }
        source.finish(matches!(&result, Ok(report) if report.bytes == size));
    });
    let stream = futures_lite::stream::unfold(Some(pipe), |pipe| async move {
        let mut pipe = pipe?;
        let mut chunk = vec![0u8; DOWNLOAD_CHUNK_BYTES];
        match pipe.read(&mut chunk).await {
            Ok(0) => None,
            Ok(len) => {
                chunk.truncate(len);
                Some((Ok(bytes::Bytes::from(chunk)), Some(pipe)))
            }
            // One error ends the body (and the connection).
            Err(error) => Some((Err(error), None)),
        }
    });
    let name = path.components().last().cloned().unwrap_or_default();
    let disposition = format!("attachment; filename*=UTF-8''{}", encode_component(&name));
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

// ---- eden files and capacity ----

async fn eden(State(shuckle): State<Arc<Shuckle>>) -> Response {
    let client = match cluster_client(&shuckle).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let shards: Vec<u8> = shuckle.registry().shards_from(0).map(|(shard, _)| shard).collect();
    let now = EggsTime::now();
    let mut sections = String::new();
    for shard in shards {
        let mut rows = String::new();
        let mut count = 0usize;
        let mut begin = InodeId::NULL;
        let mut failure = None;
        while count < EDEN_PER_SHARD_MAX {
            match client.visit_eden(shard, begin).await {
                Ok((entries, next)) => {
                    for entry in entries {
                        count += 1;
                        let left = entry.deadline.get().saturating_sub(now.get()) / 1_000_000_000;
                        rows.push_str(&format!(
                            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            entry.inode,
                            entry.inode.inode_type().map_or("UNKNOWN", InodeType::name),
                            iso(entry.deadline),
                            if entry.deadline.get() <= now.get() { "past".to_owned() } else { format!("in {left} s") }
                        ));
                    }
                    if next.is_null() || next <= begin {
                        break;
                    }
                    begin = next;
                }
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        let table = match failure {
            Some(error) => format!("<div class=\"empty\">cannot list: {}</div>", escape(&error)),
            None if count == 0 => "<div class=\"empty\">No eden files.</div>".to_owned(),
            None => format!(
                "<table><thead><tr><th>Inode</th><th>Type</th><th>Deadline (UTC)</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
            ),
        };
        sections.push_str(&format!(
            "<section class=\"shard-eden\" data-shard=\"{shard}\"><h2>Shard {shard} · {count} eden file{}</h2>{table}</section>",
            if count == 1 { "" } else { "s" }
        ));
    }
    if sections.is_empty() {
        sections = "<section><div class=\"empty\">No shard has registered yet.</div></section>".to_owned();
    }
    page("eden files", &sections).into_response()
}

async fn capacity_json(State(shuckle): State<Arc<Shuckle>>) -> impl IntoResponse {
    let services: Vec<ServiceSpace> = shuckle
        .registry()
        .block_services_from(BlockServiceId::new(0))
        .filter(|record| record.status != Status::Terminal)
        .map(|record| ServiceSpace {
            id: record.id().to_string(),
            host: record.host.clone(),
            used_bytes: record.used_bytes,
            free_bytes: record.free_bytes,
        })
        .collect();
    let disks = capacity::disks(&services);
    let (capacity_bytes, used_bytes, free_bytes) = capacity::totals(&disks);
    Json(serde_json::json!({
        "capacity_bytes": capacity_bytes, "used_bytes": used_bytes, "free_bytes": free_bytes,
        "disks": disks.len(), "block_services": services.len(),
    }))
}

/// Blocks counted per service and shard at most (one answer stays bounded
/// however large a disk is; the UI then shows "at least").
const AWAITING_COUNT_MAX: u64 = 1_000_000;

/// `GET /api/awaiting_migration`: for each block service being emptied
/// (drained, terminal or stale), how many blocks the shards still list on
/// it, i.e. what gcd has yet to migrate: `{"<id>": {"blocks": N,
/// "complete": bool}}`. Counted with reverse_block_query on every shard
/// when asked; services in good health are not counted.
async fn awaiting_migration_json(State(shuckle): State<Arc<Shuckle>>) -> Response {
    let (evacuating, shards): (Vec<BlockServiceId>, Vec<u8>) = {
        let registry = shuckle.registry();
        let now = EggsTime::now();
        let evacuating = registry
            .block_services_from(BlockServiceId::new(0))
            .filter(|record| record.status != Status::Ok || registry.is_stale(record, now))
            .map(|record| record.id())
            .collect();
        (evacuating, registry.shards_from(0).map(|(shard, _)| shard).collect())
    };
    let client = match cluster_client(&shuckle).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    let mut answer = serde_json::Map::new();
    for service in evacuating {
        let mut blocks = 0u64;
        let mut complete = true;
        for &shard in &shards {
            let (count, whole) = count_blocks(&client, shard, service).await;
            blocks += count;
            complete &= whole;
        }
        answer.insert(service.to_string(), serde_json::json!({ "blocks": blocks, "complete": complete }));
    }
    Json(serde_json::Value::Object(answer)).into_response()
}

/// Blocks `shard` lists on `service`, and whether the count is whole (not
/// capped, every page answered).
async fn count_blocks(client: &Client, shard: u8, service: BlockServiceId) -> (u64, bool) {
    let mut count = 0u64;
    let mut blocks = client.reverse_blocks(shard, service);
    while count < AWAITING_COUNT_MAX {
        match blocks.next_page().await {
            Some(Ok(entries)) => count += entries.len() as u64,
            Some(Err(_)) => return (count, false),
            None => return (count, true),
        }
    }
    (count, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_encoded() {
        assert_eq!(escape("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
        assert_eq!(encode_component("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(url_of("/browse", &[]), "/browse/");
        assert_eq!(url_of("/browse", &["a".into(), "b c".into()]), "/browse/a/b%20c");
    }

    #[test]
    fn times_are_iso_8601_utc() {
        let time = EggsTime::from_unix_ns(1_700_000_000_123_456_789).expect("after 2020");
        assert_eq!(iso(time), "2023-11-14T22:13:20Z");
    }
}

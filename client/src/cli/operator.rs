//! `eggs block-service drain|resume|terminate ID`: shuckle's operator
//! actions over its HTTP API, with the operator token.
//!
//! The token is the text of shuckle's `operator.token` (`--token-file`,
//! `EGGS_TOKEN_FILE`; default `eggsfs-data/operator.token`, where
//! `eggs local-cluster --data-dir ./eggsfs-data` keeps it, as in the README).
//! It goes only into the `Authorization: Bearer` header of one JSON POST.
//! Shuckle's HTTP address is `--http` (`EGGS_SHUCKLE_HTTP`), by default
//! shuckle's own address: shuckle serves UDP and HTTP on the same port
//! number unless told otherwise.
//!
//! The request is one HTTP/1.1 exchange on a fresh connection
//! (`Connection: close`), written here: the CLI needs no HTTP client crate
//! for one POST, and the answer is bounded ([`ANSWER_BYTES_MAX`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::BlockServiceId;

use super::output::line;
use super::{admin::parse_u64, connect};

/// Largest answer read from shuckle (one block service as JSON is < 1 KiB).
const ANSWER_BYTES_MAX: u64 = 64 << 10;
/// Connecting to shuckle and its answer, each.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where `eggs local-cluster --data-dir ./eggsfs-data` (the README's) keeps the token.
pub const TOKEN_FILE_DEFAULT: &str = "eggsfs-data/operator.token";

#[derive(clap::Args, Debug)]
pub struct BlockServiceArgs {
    #[command(subcommand)]
    pub action: BlockServiceAction,
    /// Shuckle's operator token file (local clusters: DATA_DIR/operator.token).
    #[arg(long, global = true, env = "EGGS_TOKEN_FILE", default_value = TOKEN_FILE_DEFAULT)]
    pub token_file: PathBuf,
    /// Shuckle's HTTP address, HOST:PORT (default: the --shuckle address).
    #[arg(long, global = true, env = "EGGS_SHUCKLE_HTTP", value_name = "HOST:PORT")]
    pub http: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum BlockServiceAction {
    /// No new blocks go to it; it keeps serving reads.
    Drain { id: String },
    /// Take new blocks again after a drain.
    Resume { id: String },
    /// Declare it dead for good (shuckle refuses while it is not stale).
    Terminate { id: String },
}

impl BlockServiceAction {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Drain { id } => ("drain", id),
            Self::Resume { id } => ("resume", id),
            Self::Terminate { id } => ("terminate", id),
        }
    }
}

/// Runs one operator action; prints `block service ID: STATUS`.
pub async fn block_service(args: &BlockServiceArgs, shuckle: Option<&str>) -> anyhow::Result<()> {
    let (action, id_text) = args.action.parts();
    let id = BlockServiceId::new(parse_u64(id_text).context("block service id")?);
    let addr = match &args.http {
        Some(text) => connect::shuckle_address(Some(text))?.1,
        None => connect::shuckle_address(shuckle)?.1,
    };
    let token = client::keyfile::read_token(&args.token_file).map_err(|error| {
        anyhow!("{error} (the operator token is shuckle's DATA_DIR/operator.token; give it with --token-file)")
    })?;
    let path = format!("/api/block_services/{id}/{action}");
    let (status, body) = post(addr, &path, token.as_str()).await?;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let said = json["error"].as_str().map(str::to_owned);
    match status {
        200 => {
            let now = json["status"].as_str().unwrap_or("?");
            line(format_args!("block service {id}: {now}"))
        }
        401 => bail!(
            "{action} {id}: shuckle at {addr} refused the operator token in {} ({})",
            args.token_file.display(),
            said.as_deref().unwrap_or("401")
        ),
        403 => bail!("{action} {id}: shuckle at {addr} refused the request ({})", said.as_deref().unwrap_or("403")),
        _ => bail!(
            "{action} {id}: {}",
            said.unwrap_or_else(|| format!(
                "shuckle at {addr} answered HTTP {status} (is it shuckle's HTTP port? --http)"
            ))
        ),
    }
}

/// One POST with the token; the answer's status and body.
async fn post(addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
    let unreachable = || format!("cannot reach shuckle's HTTP API at {addr}");
    let mut stream = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("{}: no answer within {} s", unreachable(), EXCHANGE_TIMEOUT.as_secs()))?
        .with_context(unreachable)?;
    let body = "{}";
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        (&mut stream).take(ANSWER_BYTES_MAX).read_to_end(&mut answer).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{}: no answer within {} s", unreachable(), EXCHANGE_TIMEOUT.as_secs()))?
        .with_context(unreachable)?;
    parse_answer(&answer).ok_or_else(|| anyhow!("{addr} did not answer as shuckle's HTTP API (is it? --http)"))
}

/// `HTTP/1.x STATUS …\r\n…\r\n\r\nBODY` → (status, body), the body cut to
/// its Content-Length when given. `None` for anything else.
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    let body = match length {
        Some(length) => body.get(..length)?,
        None => body,
    };
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_garbage_does_not() {
        let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"a\":\"b\"}\r\n";
        assert_eq!(parse_answer(answer), Some((401, "{\"a\":\"b\"}\r\n".to_owned())));
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{}"), Some((200, "{}".to_owned())));
        assert_eq!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n{}"), None);
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(parse_answer(b""), None);
        assert_eq!(parse_answer(&[0xff, 0xfe]), None);
    }
}

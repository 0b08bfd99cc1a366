//! The HTTP side: the JSON API for clients and humans, and the web UI.
//!
//! - `GET /api/block_services`: an array of [`BlockServiceJson`]. Ids are
//!   hex strings (`"0x0123456789abcdef"`, as everywhere else in eggsfs) so
//!   JavaScript's doubles do not round them; times are Unix milliseconds
//!   (`null` when never) with a human form beside them.
//! - `GET /api/shards`, `GET /api/cdc`.
//! - `POST /api/block_services/<id>/{drain,resume,terminate}`: the updated
//!   service, or a 4xx `{"error": "..."}` saying why not.
//! - `GET /`: the web UI, one self-contained page.
//!
//! Reading is open to anyone who can reach the port. Every mutating request
//! ([`operator_check`]) needs the operator token (`operator.token`, made by
//! shuckle at its first start, mode 0600) as `Authorization: Bearer TOKEN`,
//! else 401; and it must not come from another site, else 403: an `Origin`
//! header, when present, names this very host, `Sec-Fetch-Site` (sent by
//! browsers) is `same-origin` or `none`, and the body is declared
//! `application/json` (415 otherwise), which an HTML form cannot send. The
//! web UI asks for the token once, keeps it in the tab's sessionStorage and
//! sends it as that header; it never goes into a URL.
//!
//! No secret key, and never the operator token, is part of an answer.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use daemon::keyfile::OperatorToken;
use serde::Serialize;
use wire::limits::NS_PER_SECOND;
use wire::{BlockServiceId, EggsTime};

use crate::registry::{BlockServiceRecord, PeerRecord, Registry, StatusAction, StatusError, ago};
use crate::service::{ActionError, Shuckle};

const INDEX_HTML: &str = include_str!("../ui/index.html");

/// A block service as the API shows it.
#[derive(Serialize)]
pub struct BlockServiceJson {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub storage_class: u8,
    pub status: &'static str,
    pub stale: bool,
    /// No space for new blocks (its last check reported no free bytes
    /// above its reserve): no write weight until it has space again.
    pub full: bool,
    /// Unix milliseconds of the last good check; `null` if never.
    pub last_check: Option<u64>,
    /// "3 minutes ago".
    pub last_check_ago: String,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Blocks stored.
    pub blocks: u64,
    pub free_blocks: u64,
    pub write_weight: u64,
}

#[derive(Serialize)]
pub struct PeerJson {
    pub addr: Option<String>,
    /// Unix milliseconds of the last registration; `null` if never.
    pub last_seen: Option<u64>,
    pub last_seen_ago: String,
}

#[derive(Serialize)]
pub struct ShardJson {
    pub shard: u8,
    #[serde(flatten)]
    pub peer: PeerJson,
}

#[derive(Serialize)]
struct ErrorJson {
    error: String,
}

fn unix_ms(eggs_ns: u64) -> Option<u64> {
    (eggs_ns != 0).then(|| EggsTime::new(eggs_ns).unix_ns() / (NS_PER_SECOND / 1000))
}

fn block_service_json(
    registry: &Registry,
    record: &BlockServiceRecord,
    weight: u64,
    now: EggsTime,
) -> BlockServiceJson {
    BlockServiceJson {
        id: record.id().to_string(),
        addr: record.addr.to_string(),
        host: record.host.clone(),
        storage_class: record.storage_class,
        status: record.status.name(),
        stale: registry.is_stale(record, now),
        full: registry.is_full(record),
        last_check: unix_ms(record.last_check_ns),
        last_check_ago: ago(record.last_check(), now),
        used_bytes: record.used_bytes,
        free_bytes: record.free_bytes,
        blocks: record.used_blocks,
        free_blocks: record.free_blocks,
        write_weight: weight,
    }
}

fn peer_json(record: Option<&PeerRecord>, now: EggsTime) -> PeerJson {
    PeerJson {
        addr: record.map(|r| r.addr.to_string()),
        last_seen: record.and_then(|r| unix_ms(r.last_seen_ns)),
        last_seen_ago: ago(EggsTime::new(record.map_or(0, |r| r.last_seen_ns)), now),
    }
}

pub fn router(shuckle: Arc<Shuckle>, operator: OperatorToken) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/block_services", get(block_services))
        .route("/api/shards", get(shards))
        .route("/api/cdc", get(cdc))
        .route("/api/block_services/{id}/{action}", post(status_action))
        .merge(crate::browse::routes())
        .layer(Extension(Arc::new(operator)))
        .with_state(shuckle)
}

/// Whether a mutating request may act: the operator's token, from this
/// site, declared JSON. The refusal's status and one line saying why.
pub fn operator_check(operator: &OperatorToken, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match offered {
        None => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "operator actions need the operator token (Authorization: Bearer …)",
            ));
        }
        Some(token) if !operator.matches(token.as_bytes()) => {
            return Err((StatusCode::UNAUTHORIZED, "wrong operator token"));
        }
        Some(_) => {}
    }
    let text = |name| headers.get(name).map(|value| value.to_str().unwrap_or("\u{fffd}"));
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or("");
        let same = ["http://", "https://"].iter().any(|scheme| origin.strip_prefix(scheme) == Some(host));
        if host.is_empty() || !same {
            return Err((StatusCode::FORBIDDEN, "refusing a cross-site request (Origin is not this host)"));
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err((StatusCode::FORBIDDEN, "refusing a cross-site request (Sec-Fetch-Site)"));
    }
    let json = text(header::CONTENT_TYPE)
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "operator actions must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn block_services(State(shuckle): State<Arc<Shuckle>>) -> Json<Vec<BlockServiceJson>> {
    let now = EggsTime::now();
    let registry = shuckle.registry();
    let weights = registry.write_weights(now);
    let list = registry
        .block_services_from(BlockServiceId::new(0))
        .map(|record| block_service_json(&registry, record, weights.get(&record.id()).copied().unwrap_or(0), now))
        .collect();
    Json(list)
}

async fn shards(State(shuckle): State<Arc<Shuckle>>) -> Json<Vec<ShardJson>> {
    let now = EggsTime::now();
    let registry = shuckle.registry();
    Json(
        registry
            .shards_from(0)
            .map(|(shard, record)| ShardJson { shard, peer: peer_json(Some(record), now) })
            .collect(),
    )
}

async fn cdc(State(shuckle): State<Arc<Shuckle>>) -> Json<PeerJson> {
    Json(peer_json(shuckle.registry().cdc(), EggsTime::now()))
}

fn error(status: StatusCode, text: String) -> Response {
    (status, Json(ErrorJson { error: text })).into_response()
}

/// Accepts `0x0123…`, `0123…` (hex) as the API prints them.
fn parse_id(text: &str) -> Option<BlockServiceId> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok().map(BlockServiceId::new)
}

async fn status_action(
    State(shuckle): State<Arc<Shuckle>>,
    Extension(operator): Extension<Arc<OperatorToken>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if let Err((status, text)) = operator_check(&operator, &headers) {
        tracing::warn!(%status, reason = text, "refused an operator action");
        return error(status, text.to_owned());
    }
    let Some(action) = StatusAction::parse(&action) else {
        return error(StatusCode::NOT_FOUND, format!("unknown action {action:?}: use drain, resume or terminate"));
    };
    let Some(id) = parse_id(&id) else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a block service id (16 hex digits)"));
    };
    let now = EggsTime::now();
    // The store fsyncs: off the async workers.
    let acting = Arc::clone(&shuckle);
    let result = match tokio::task::spawn_blocking(move || acting.status_action(id, action, now)).await {
        Ok(result) => result,
        Err(failure) => {
            tracing::error!(%failure, "status change task failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the change failed; nothing changed".to_owned());
        }
    };
    match result {
        Ok(record) => {
            let registry = shuckle.registry();
            let weight = registry.write_weights(now).get(&id).copied().unwrap_or(0);
            Json(block_service_json(&registry, &record, weight, now)).into_response()
        }
        Err(ActionError::Refused(refusal @ StatusError::UnknownBlockService(_))) => {
            error(StatusCode::NOT_FOUND, refusal.to_string())
        }
        Err(ActionError::Refused(refusal)) => error(StatusCode::CONFLICT, refusal.to_string()),
        Err(ActionError::Store(failure)) => {
            tracing::error!(%failure, "cannot store a status change");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the change could not be stored; nothing changed".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn operator_actions_need_the_token_from_this_site_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let operator = daemon::keyfile::load_or_create_token(&dir.path().join("operator.token")).unwrap();
        let bearer = format!("Bearer {}", operator.as_str());
        let json = ("content-type", "application/json");
        let host = ("host", "10.0.0.1:5000");
        let check = |pairs: &[(&'static str, &str)]| operator_check(&operator, &headers(pairs)).map_err(|(s, _)| s);
        assert_eq!(check(&[json, host]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(check(&[json, host, ("authorization", "Bearer 0123")]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(check(&[json, host, ("authorization", operator.as_str())]), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(check(&[json, host, ("authorization", &bearer)]), Ok(()));
        assert_eq!(check(&[("content-type", "application/json; charset=utf-8"), ("authorization", &bearer)]), Ok(()));
        let origin = |value| [json, host, ("authorization", bearer.as_str()), ("origin", value)];
        assert_eq!(check(&origin("http://10.0.0.1:5000")), Ok(()));
        assert_eq!(check(&origin("https://10.0.0.1:5000")), Ok(()));
        assert_eq!(check(&origin("http://evil.example")), Err(StatusCode::FORBIDDEN));
        assert_eq!(check(&origin("http://10.0.0.1:5001")), Err(StatusCode::FORBIDDEN));
        assert_eq!(check(&origin("null")), Err(StatusCode::FORBIDDEN));
        let site = |value| [json, host, ("authorization", bearer.as_str()), ("sec-fetch-site", value)];
        assert_eq!(check(&site("same-origin")), Ok(()));
        assert_eq!(check(&site("none")), Ok(()));
        assert_eq!(check(&site("cross-site")), Err(StatusCode::FORBIDDEN));
        assert_eq!(check(&site("same-site")), Err(StatusCode::FORBIDDEN));
        let form = ("content-type", "application/x-www-form-urlencoded");
        assert_eq!(check(&[form, host, ("authorization", &bearer)]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(check(&[host, ("authorization", &bearer)]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }

    #[test]
    fn ids_parse_as_printed() {
        let id = BlockServiceId::new(0x0123_4567_89ab_cdef);
        assert_eq!(parse_id(&id.to_string()), Some(id));
        assert_eq!(parse_id("0123456789abcdef"), Some(id));
        assert_eq!(parse_id("0x"), None);
        assert_eq!(parse_id("0x0123456789abcdef0"), None);
        assert_eq!(parse_id("zz"), None);
    }
}

//! Feeds one byte string to every decoder of `wire` and checks what they
//! accept. Shared by the bounded fuzzing in `tests/fuzz.rs` and the
//! cargo-fuzz targets in `fuzz/` (which include this file by path), so both
//! check the same properties:
//!
//! - no decoder panics, whatever the bytes;
//! - whatever decodes re-encodes to exactly the same bytes (the encoding is
//!   canonical, and nothing is silently dropped or normalised);
//! - every decoded list iterates exactly `len()` elements, nested lists too.

use wire::block::{
    BlockRequest, CrcResp, EraseResp, FetchRespHead, StatsResp, TAG_CRC_RESP, TAG_ERASED, TAG_FETCHED, TAG_STATS_RESP,
    TAG_WRITTEN, WriteResp, request_len,
};
use wire::cdc::{CdcRequest, CdcResponse};
use wire::codec::{Decode, Encode, List};
use wire::datagram::{self, CDC_MAGIC, HEADER_BYTES, KIND_PRIVILEGED, SHARD_MAGIC, SHUCKLE_MAGIC};
use wire::mac::{MAC_BYTES, MacKey, SecretKey};
use wire::policy::Policy;
use wire::shard::{ShardRequest, ShardResponse};
use wire::shuckle::{RegistrationDatagram, ShuckleRequest, ShuckleResponse, is_registration};
use wire::span::SpanBody;
use zerocopy::FromBytes;

/// The cluster key of fuzzed privileged datagrams.
pub fn cluster_key() -> MacKey {
    MacKey::new(&SecretKey(*b"fuzz cluster key"))
}

/// Every decoder, on `bytes`; how many accepted them.
pub fn all_decoders(bytes: &[u8], key: &MacKey) -> usize {
    datagram_families(bytes, key) + block_messages(bytes, key) + registration(bytes) + policy(bytes)
}

/// Asserts that a decoded list yields exactly its count of elements.
fn walk_list<'a, T: Encode + Decode<'a> + Clone>(list: &List<'a, T>) -> Vec<T> {
    let items: Vec<T> = list.iter().collect();
    assert_eq!(items.len(), list.len(), "a decoded list iterates fewer elements than its count");
    items
}

fn walk_span<'a, B: Encode + Decode<'a> + Clone>(body: &SpanBody<'a, B>) {
    if let SpanBody::Blocks { parity, blocks, .. } = body {
        assert_eq!(walk_list(blocks).len(), parity.total_blocks());
    }
}

fn walk_shard_request(request: &ShardRequest<'_>) {
    match request {
        ShardRequest::AddEdenSpan(req) => {
            walk_span(&req.body);
            drop(walk_list(&req.blacklist));
        }
        ShardRequest::CertifyEdenSpan(req) => drop(walk_list(&req.proofs)),
        ShardRequest::CertifyExpunge(req) => drop(walk_list(&req.proofs)),
        _ => {}
    }
}

fn walk_shard_response(response: &ShardResponse<'_>) {
    match response {
        ShardResponse::LsDir(resp) => {
            for entry in walk_list(&resp.entries) {
                assert!(!entry.name.as_bytes().is_empty());
            }
        }
        ShardResponse::AddEdenSpan(resp) => drop(walk_list(&resp.blocks)),
        ShardResponse::FetchSpans(resp) => {
            for span in walk_list(&resp.spans) {
                walk_span(&span.body);
            }
        }
        ShardResponse::ExpungeEdenSpan(resp) => drop(walk_list(&resp.blocks)),
        ShardResponse::VisitInodes(resp) => drop(walk_list(&resp.inodes)),
        ShardResponse::VisitEden(resp) => drop(walk_list(&resp.entries)),
        ShardResponse::ReverseBlockQuery(resp) => drop(walk_list(&resp.entries)),
        _ => {}
    }
}

fn walk_shuckle_response(response: &ShuckleResponse<'_>) {
    match response {
        ShuckleResponse::Shards(resp) => drop(walk_list(&resp.shards)),
        ShuckleResponse::BlockServices(resp) => drop(walk_list(&resp.block_services)),
        ShuckleResponse::BlockServicesWithKeys(resp) => drop(walk_list(&resp.block_services)),
        _ => {}
    }
}

/// Decodes `$bytes` as `$T` with no key and with `$key`; whatever decodes is
/// walked with `$walk`, printed (Debug walks every list again) and re-encoded.
macro_rules! decode_and_reencode {
    ($T:ident, $bytes:expr, $key:expr, $walk:expr) => {{
        let bytes: &[u8] = $bytes;
        let mut accepted = 0;
        for key in [None, Some($key)] {
            if let Ok((header, body)) = datagram::decode::<$T>(bytes, key) {
                accepted += 1;
                $walk(&body);
                let _ = format!("{body:?}");
                let mut buf = vec![0u8; bytes.len() + 16];
                // A MAC'd error answers a privileged request: re-encode it as
                // a server would, as the response to such a request.
                let mut request = header;
                request.kind = if header.kind == datagram::KIND_PRIVILEGED_ERROR { 0x81 } else { header.kind };
                let sent_at = datagram::sent_at(bytes).unwrap_or(wire::EggsTime::ZERO);
                let len = datagram::encode_response_at(&mut buf, &request, &body, key, sent_at)
                    .expect("a decoded datagram re-encodes");
                assert_eq!(&buf[..len], bytes, concat!(stringify!($T), ": decode then encode changed the bytes"));
            }
        }
        accepted
    }};
}

/// Every datagram family, requests and responses, with and without the key.
pub fn datagram_families(bytes: &[u8], key: &MacKey) -> usize {
    for magic in [SHARD_MAGIC, CDC_MAGIC, SHUCKLE_MAGIC] {
        let _ = datagram::peek_header(bytes, magic);
    }
    shard_family(bytes, key) + cdc_family(bytes, key) + shuckle_family(bytes, key)
}

/// Shard requests and responses.
pub fn shard_family(bytes: &[u8], key: &MacKey) -> usize {
    decode_and_reencode!(ShardRequest, bytes, key, walk_shard_request)
        + decode_and_reencode!(ShardResponse, bytes, key, walk_shard_response)
}

/// CDC requests and responses.
pub fn cdc_family(bytes: &[u8], key: &MacKey) -> usize {
    decode_and_reencode!(CdcRequest, bytes, key, |_: &CdcRequest<'_>| {})
        + decode_and_reencode!(CdcResponse, bytes, key, |_: &CdcResponse<'_>| {})
}

/// Shuckle requests and responses.
pub fn shuckle_family(bytes: &[u8], key: &MacKey) -> usize {
    decode_and_reencode!(ShuckleRequest, bytes, key, |_: &ShuckleRequest| {})
        + decode_and_reencode!(ShuckleResponse, bytes, key, walk_shuckle_response)
}

/// `bytes` with its MAC recomputed when its kind is privileged, so a fuzzer
/// that cannot forge MACs still reaches the body decoders behind the check.
pub fn re_signed(bytes: &[u8], key: &MacKey) -> Option<Vec<u8>> {
    let len = bytes.len();
    if len < HEADER_BYTES + MAC_BYTES || bytes[12] & KIND_PRIVILEGED == 0 {
        return None;
    }
    let mut signed = bytes.to_vec();
    let mac = key.mac_message(&signed[..len - MAC_BYTES]);
    signed[len - MAC_BYTES..].copy_from_slice(&mac);
    Some(signed)
}

/// The block service's request decoder and its response layouts.
pub fn block_messages(bytes: &[u8], key: &MacKey) -> usize {
    if let Some(&tag) = bytes.first() {
        let _ = request_len(tag);
    }
    let mut accepted = 0;
    if let Ok(request) = BlockRequest::decode(bytes) {
        accepted += 1;
        assert_eq!(request.as_bytes(), bytes, "BlockRequest: decode then encode changed the bytes");
        if let BlockRequest::Write(write) = request {
            let _ = write.certificate_valid(key);
        }
    }
    // Responses are plain layouts: any bytes of the right length read; a
    // client then checks the tag (and the MAC, where there is one).
    if let Ok(resp) = WriteResp::read_from_bytes(bytes) {
        let _ = resp.proof_valid(key);
        accepted += usize::from(resp.tag == TAG_WRITTEN);
    }
    if let Ok(resp) = EraseResp::read_from_bytes(bytes) {
        let _ = resp.proof_valid(key);
        accepted += usize::from(resp.tag == TAG_ERASED);
    }
    if let Ok(resp) = StatsResp::read_from_bytes(bytes) {
        let _ = resp.verify(key, [0; 8]);
        accepted += usize::from(resp.tag == TAG_STATS_RESP);
    }
    if let Ok(resp) = FetchRespHead::read_from_bytes(bytes) {
        accepted += usize::from(resp.tag == TAG_FETCHED);
    }
    if let Ok(resp) = CrcResp::read_from_bytes(bytes) {
        accepted += usize::from(resp.tag == TAG_CRC_RESP);
    }
    accepted
}

/// The 19-byte registration (and its optional host).
pub fn registration(bytes: &[u8]) -> usize {
    let _ = is_registration(bytes);
    let Ok(datagram) = RegistrationDatagram::decode(bytes) else { return 0 };
    let mut buf = [0u8; 128];
    let len = datagram.encode(&mut buf).expect("a decoded registration re-encodes");
    assert_eq!(&buf[..len], bytes, "registration: decode then encode changed the bytes");
    1
}

/// The directory policy blob.
pub fn policy(bytes: &[u8]) -> usize {
    let Some(policy) = Policy::decode(bytes) else { return 0 };
    assert_eq!(&policy.encode()[..], bytes, "policy: decode then encode changed the bytes");
    1
}

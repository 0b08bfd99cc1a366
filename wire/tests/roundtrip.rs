//! Property tests: every message of every family round-trips.
//!
//! For each kind of each family (driven by `Kind::ALL`, so a kind without a
//! strategy fails), random messages are encoded with
//! `wire::datagram::encode`, decoded, compared, and re-encoded to the same
//! bytes. Privileged kinds are checked with the right key, no key, a wrong
//! key and every single flipped byte. Block messages, the registration
//! datagram, the policy blob, CRC32C and the span layout have their own
//! properties below.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use zerocopy::{FromBytes, IntoBytes};

use common::strategies::*;
use wire::block::{self, BlockRequest, BlockServiceStats};
use wire::cdc::{CdcKind, CdcRequest, CdcResponse};
use wire::codec::Name;
use wire::codec::{DecodeError, EncodeError};
use wire::crc::{crc32c, crc32c_append, crc32c_combine, crc32c_zeros};
use wire::datagram::{self, Body, HEADER_BYTES, PROTOCOL_VERSION};
use wire::ids::{BlockId, InodeId};
use wire::limits::BLOCK_SIZE_BYTES_MAX;
use wire::mac::{MacKey, SecretKey};
use wire::policy::Policy;
use wire::shard::{ShardKind, ShardRequest, ShardResponse};
use wire::shuckle::{self, Registration, RegistrationDatagram, ShuckleKind, ShuckleRequest, ShuckleResponse};
use wire::span::{Parity, SpanLayout};

/// Cases per kind: 60-odd kinds, so the whole file stays a few seconds.
const CASES_PER_KIND: u32 = 48;

fn cluster_key() -> MacKey {
    MacKey::new(&SecretKey(*b"the cluster key!"))
}

fn other_key() -> MacKey {
    MacKey::new(&SecretKey(*b"not the key, no!"))
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: CASES_PER_KIND, failure_persistence: None, ..Config::default() })
}

/// Encodes, decodes, compares and re-encodes one datagram of family `$T`,
/// then checks MAC refusals (privileged kinds) and that every strict prefix
/// of the encoding is refused. `$expected_kind` is the kind byte it must have.
macro_rules! check_datagram {
    ($T:ident, $value:expr, $request_id:expr, $expected_kind:expr) => {{
        let value = $value;
        let request_id: u64 = $request_id;
        let key = cluster_key();
        let privileged = Body::kind(value) & datagram::KIND_PRIVILEGED != 0;
        prop_assert_eq!(Body::kind(value), $expected_kind);
        let mut buf = vec![0u8; 1 << 16];
        let len = datagram::encode(&mut buf, request_id, value, Some(&key)).expect("encode");
        let bytes = &buf[..len];
        prop_assert_eq!(
            len,
            HEADER_BYTES + value.body_len() + if privileged { datagram::PRIVILEGED_TRAILER_BYTES } else { 0 }
        );
        prop_assert_eq!(&bytes[..3], &<$T as Body>::MAGIC[..]);
        prop_assert_eq!(bytes[3], PROTOCOL_VERSION);
        prop_assert_eq!(&bytes[4..12], &request_id.to_le_bytes()[..]);
        prop_assert_eq!(bytes[12], $expected_kind);

        let (header, decoded) = datagram::decode::<$T>(bytes, Some(&key))
            .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
        prop_assert_eq!(header.request_id(), request_id);
        prop_assert_eq!(header.kind, $expected_kind);
        prop_assert_eq!(&decoded, value);
        // Re-encoding the decoded value (whose lists are views of `bytes`)
        // gives the same bytes.
        let mut again = vec![0u8; len];
        let sent_at = datagram::sent_at(bytes).unwrap_or(wire::EggsTime::ZERO);
        let again_len = datagram::encode_at(&mut again, request_id, &decoded, Some(&key), sent_at).expect("re-encode");
        prop_assert_eq!(&again[..again_len], bytes);
        // One byte short is an error, never a panic or a partial datagram.
        let mut short = vec![0u8; len - 1];
        let short_result = datagram::encode(&mut short, request_id, value, Some(&key));
        prop_assert!(
            matches!(short_result, Err(EncodeError::BufferTooSmall { .. })),
            "one byte short: {:?}",
            short_result
        );
        // Every strict prefix is refused: the encoding is self-delimiting.
        for cut in 0..len {
            prop_assert!(datagram::decode::<$T>(&bytes[..cut], Some(&key)).is_err(), "prefix of {} decoded", cut);
        }
        if privileged {
            prop_assert_eq!(datagram::encode(&mut buf.clone(), request_id, value, None), Err(EncodeError::MissingKey));
            prop_assert_eq!(datagram::decode::<$T>(bytes, None).err(), Some(DecodeError::BadMac));
            prop_assert_eq!(datagram::decode::<$T>(bytes, Some(&other_key())).err(), Some(DecodeError::BadMac));
            let mut flipped = bytes.to_vec();
            for position in 0..len {
                flipped[position] ^= 0x01;
                let result = datagram::decode::<$T>(&flipped, Some(&key));
                match position {
                    0..=2 => prop_assert_eq!(result.err(), Some(DecodeError::BadMagic)),
                    3 => prop_assert_eq!(result.err(), Some(DecodeError::UnsupportedVersion(PROTOCOL_VERSION ^ 1))),
                    _ => prop_assert_eq!(result.err(), Some(DecodeError::BadMac), "flipped byte {}", position),
                }
                flipped[position] ^= 0x01;
            }
        } else {
            // Public kinds need no key and ignore one.
            let (_, without_key) = datagram::decode::<$T>(bytes, None).expect("public kinds need no key");
            prop_assert_eq!(&without_key, value);
        }
    }};
}

#[test]
fn every_shard_request_round_trips() {
    for &kind in ShardKind::ALL {
        runner()
            .run(&(shard_request(kind), any::<u64>()), |(request, request_id)| {
                check_datagram!(ShardRequest, &request, request_id, kind as u8);
                prop_assert_eq!(request.kind(), kind);
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{kind:?}: {failure}"));
    }
}

#[test]
fn every_shard_response_round_trips() {
    for &kind in ShardKind::ALL {
        runner()
            .run(&(shard_response(kind), any::<u64>()), |(response, request_id)| {
                check_datagram!(ShardResponse, &response, request_id, kind as u8);
                prop_assert_eq!(response.kind(), Some(kind));
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{kind:?}: {failure}"));
    }
}

#[test]
fn error_responses_round_trip_in_every_family() {
    runner()
        .run(&(error_resp(), any::<u64>()), |(error, request_id)| {
            check_datagram!(ShardResponse, &ShardResponse::Error(error), request_id, datagram::KIND_ERROR);
            check_datagram!(CdcResponse, &CdcResponse::Error(error), request_id, datagram::KIND_ERROR);
            check_datagram!(ShuckleResponse, &ShuckleResponse::Error(error), request_id, datagram::KIND_ERROR);
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_cdc_message_round_trips() {
    for &kind in CdcKind::ALL {
        runner()
            .run(&(cdc_request(kind), cdc_response(kind), any::<u64>()), |(request, response, request_id)| {
                check_datagram!(CdcRequest, &request, request_id, kind as u8);
                check_datagram!(CdcResponse, &response, request_id, kind as u8);
                prop_assert_eq!(request.kind(), kind);
                prop_assert_eq!(response.kind(), Some(kind));
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{kind:?}: {failure}"));
    }
}

#[test]
fn every_shuckle_message_round_trips() {
    for &kind in ShuckleKind::ALL {
        runner()
            .run(&(shuckle_request(kind), shuckle_response(kind), any::<u64>()), |(request, response, request_id)| {
                check_datagram!(ShuckleRequest, &request, request_id, kind as u8);
                check_datagram!(ShuckleResponse, &response, request_id, kind as u8);
                prop_assert_eq!(request.kind(), kind);
                prop_assert_eq!(response.kind(), Some(kind));
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{kind:?}: {failure}"));
    }
}

#[test]
fn families_refuse_each_others_datagrams() {
    runner()
        .run(&(cdc_request(CdcKind::MkDir), any::<u64>()), |(request, request_id)| {
            let mut buf = [0u8; 1472];
            let len = datagram::encode(&mut buf, request_id, &request, None).expect("encode");
            prop_assert_eq!(datagram::decode::<ShardRequest>(&buf[..len], None).err(), Some(DecodeError::BadMagic));
            prop_assert_eq!(datagram::decode::<ShuckleRequest>(&buf[..len], None).err(), Some(DecodeError::BadMagic));
            Ok(())
        })
        .unwrap();
}

fn block_id() -> impl Strategy<Value = BlockId> {
    any::<u64>().prop_map(BlockId::new)
}

fn secret() -> impl Strategy<Value = SecretKey> {
    any::<[u8; 16]>().prop_map(SecretKey)
}

/// Decodes a block request and checks prefixes and trailing bytes.
fn check_block_request(request: BlockRequest) -> Result<(), TestCaseError> {
    let bytes = request.as_bytes();
    prop_assert_eq!(block::request_len(bytes[0]), Some(bytes.len()));
    prop_assert_eq!(BlockRequest::decode(bytes), Ok(request));
    for cut in 0..bytes.len() {
        prop_assert_eq!(BlockRequest::decode(&bytes[..cut]).err(), Some(DecodeError::Truncated));
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    prop_assert_eq!(BlockRequest::decode(&longer).err(), Some(DecodeError::TrailingBytes(1)));
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    #[test]
    fn block_requests_round_trip(secret in secret(), id in block_id(), crc in any::<u32>(), size in any::<u32>(), token in any::<[u8; 8]>()) {
        let key = MacKey::new(&secret);
        let other = other_key();
        let write = block::WriteReq::new(&key, id, crc, size);
        let mut expected = vec![b'w'];
        expected.extend_from_slice(&id.get().to_le_bytes());
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.extend_from_slice(&size.to_le_bytes());
        expected.extend_from_slice(&key.mac(&[&expected]));
        prop_assert_eq!(write.as_bytes(), &expected[..]);
        prop_assert!(write.certificate_valid(&key));
        prop_assert!(!write.certificate_valid(&other));
        check_block_request(BlockRequest::Write(write))?;

        let erase = block::EraseReq::new(&key, id);
        prop_assert!(erase.certificate_valid(&key));
        prop_assert!(!erase.certificate_valid(&other));
        check_block_request(BlockRequest::Erase(erase))?;
        check_block_request(BlockRequest::Fetch(block::FetchReq::new(id)))?;
        check_block_request(BlockRequest::Crc(block::CrcReq::new(id)))?;
        check_block_request(BlockRequest::Stats(block::StatsReq::new(token)))?;
    }

    #[test]
    fn block_responses_round_trip(secret in secret(), id in block_id(), size in any::<u32>(), crc in any::<u32>(), token in any::<[u8; 8]>(), counts in any::<[u64; 4]>()) {
        let key = MacKey::new(&secret);
        let other = other_key();
        let written = block::WriteResp::new(&key, id);
        let decoded = block::WriteResp::read_from_bytes(written.as_bytes()).unwrap();
        prop_assert_eq!(decoded, written);
        prop_assert!(decoded.proof_valid(&key));
        prop_assert!(!decoded.proof_valid(&other));
        // A write proof is not an erase proof.
        let mut as_erase = written.as_bytes().to_vec();
        as_erase[0] = block::TAG_ERASED;
        prop_assert!(!block::EraseResp::read_from_bytes(&as_erase).unwrap().proof_valid(&key));

        let erased = block::EraseResp::new(&key, id);
        let decoded = block::EraseResp::read_from_bytes(erased.as_bytes()).unwrap();
        prop_assert_eq!(decoded, erased);
        prop_assert!(decoded.proof_valid(&key));
        prop_assert!(!decoded.proof_valid(&other));

        let fetched = block::FetchRespHead::new(size);
        prop_assert_eq!(fetched.as_bytes(), &[&[b'F'][..], &size.to_le_bytes()].concat()[..]);
        prop_assert_eq!(block::FetchRespHead::read_from_bytes(fetched.as_bytes()).unwrap(), fetched);
        let crc_resp = block::CrcResp::new(size, crc);
        prop_assert_eq!(crc_resp.as_bytes(), &[&[b'C'][..], &size.to_le_bytes(), &crc.to_le_bytes()].concat()[..]);
        prop_assert_eq!(block::CrcResp::read_from_bytes(crc_resp.as_bytes()).unwrap(), crc_resp);

        let stats = BlockServiceStats { used_bytes: counts[0], free_bytes: counts[1], used_blocks: counts[2], free_blocks: counts[3] };
        let resp = block::StatsResp::new(&key, token, stats);
        let decoded = block::StatsResp::read_from_bytes(resp.as_bytes()).unwrap();
        prop_assert_eq!(decoded.verify(&key, token), Some(stats));
        prop_assert_eq!(decoded.verify(&other, token), None);
        let mut wrong_token = token;
        wrong_token[0] ^= 1;
        prop_assert_eq!(decoded.verify(&key, wrong_token), None);
        for position in 0..resp.as_bytes().len() {
            let mut flipped = resp.as_bytes().to_vec();
            flipped[position] ^= 0x80;
            let flipped = block::StatsResp::read_from_bytes(&flipped).unwrap();
            prop_assert_eq!(flipped.verify(&key, token), None, "flipped byte {}", position);
        }
    }

    #[test]
    fn request_len_knows_exactly_the_five_request_tags(tag in any::<u8>()) {
        let expected = match tag {
            b'w' => Some(25),
            b'f' | b'c' | b's' => Some(9),
            b'e' => Some(17),
            _ => None,
        };
        prop_assert_eq!(block::request_len(tag), expected);
    }

    #[test]
    fn registration_round_trips(
        key in any::<[u8; 16]>().prop_filter("shuckle's magic", |k| !k.starts_with(b"EGK")),
        port in any::<u16>(),
        storage_class in 2u8..,
        host in proptest::option::of(blob::<{ wire::limits::HOST_NAME_BYTES_MAX }>()),
    ) {
        let datagram = RegistrationDatagram {
            registration: Registration { secret_key: key, port: port.into(), storage_class },
            host,
        };
        let mut buf = [0u8; 128];
        let len = datagram.encode(&mut buf).unwrap();
        let bytes = &buf[..len];
        prop_assert_eq!(&bytes[..16], &key[..]);
        prop_assert_eq!(&bytes[16..18], &port.to_le_bytes()[..]);
        prop_assert_eq!(bytes[18], storage_class);
        prop_assert_eq!(len, 19 + host.map_or(0, |h| 1 + h.as_bytes().len()));
        prop_assert_eq!(RegistrationDatagram::decode(bytes), Ok(datagram));
        prop_assert!(shuckle::is_registration(bytes));
        // Storage classes 0 (inline) and 1 (zero-fill) are not block services.
        for refused in [0u8, 1] {
            let mut bad = bytes.to_vec();
            bad[18] = refused;
            prop_assert!(RegistrationDatagram::decode(&bad).is_err());
        }
        for cut in 0..19 {
            prop_assert!(RegistrationDatagram::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn headered_shuckle_datagrams_are_not_registrations(kind in proptest::sample::select(ShuckleKind::ALL), request_id in any::<u64>()) {
        let key = cluster_key();
        let mut runner = TestRunner::deterministic();
        let request = shuckle_request(kind).new_tree(&mut runner).unwrap().current();
        let mut buf = [0u8; 1472];
        let len = datagram::encode(&mut buf, request_id, &request, Some(&key)).unwrap();
        prop_assert!(!shuckle::is_registration(&buf[..len]), "{:?} looks like a registration", kind);
    }

    #[test]
    fn policies_round_trip(storage_class in 2u8.., parity in parity(), span in any::<u32>()) {
        let limit = (parity.data_blocks() as u64 * BLOCK_SIZE_BYTES_MAX as u64).min(u32::MAX as u64);
        let span_size_bytes = (span as u64 % limit) as u32 + 1;
        let policy = Policy::new(storage_class, parity, span_size_bytes).expect("valid policy");
        let bytes = policy.encode();
        let mut expected = vec![1, storage_class, parity.0, 0];
        expected.extend_from_slice(&span_size_bytes.to_le_bytes());
        prop_assert_eq!(&bytes[..], &expected[..]);
        prop_assert_eq!(Policy::decode(&bytes), Some(policy));
        prop_assert_eq!(Policy::decode(&bytes[..7]), None);
        prop_assert_eq!(Policy::decode(&[&bytes[..], &[0]].concat()), None);
    }

    #[test]
    fn any_eight_bytes_that_decode_as_a_policy_re_encode_identically(bytes in any::<[u8; 8]>()) {
        if let Some(policy) = Policy::decode(&bytes) {
            prop_assert_eq!(policy.encode(), bytes);
        }
    }

    #[test]
    fn crc_combine_matches_concatenation(a in proptest::collection::vec(any::<u8>(), 0..2000), b in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let whole = [&a[..], &b[..]].concat();
        prop_assert_eq!(crc32c_combine(crc32c(&a), crc32c(&b), b.len() as u64), crc32c(&whole));
        prop_assert_eq!(crc32c_append(crc32c(&a), &b), crc32c(&whole));
    }

    #[test]
    fn crc_of_zeros_matches_the_bytes(len in 0u64..300_000) {
        prop_assert_eq!(crc32c_zeros(len), crc32c(&vec![0u8; len as usize]));
    }

    #[test]
    fn crc_zeros_splits_anywhere(a in 0u64..1 << 40, b in 0u64..1 << 40) {
        prop_assert_eq!(crc32c_combine(crc32c_zeros(a), crc32c_zeros(b), b), crc32c_zeros(a + b));
    }

    #[test]
    fn span_crc_is_the_crc_of_the_span(size in 1usize..20_000, parity in parity(), seed in any::<u8>()) {
        let span: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let layout = SpanLayout::new(size as u64, parity).unwrap();
        let crcs: Vec<u32> = (0..parity.data_blocks())
            .map(|i| {
                let range = layout.data_block_range(i);
                crc32c(&span[range.start as usize..range.end as usize])
            })
            .collect();
        prop_assert_eq!(layout.span_crc(&crcs), crc32c(&span));
        let total: u64 = (0..parity.data_blocks()).map(|i| layout.block_size(i)).sum();
        prop_assert_eq!(total, size as u64);
    }
}

proptest! {
    #![proptest_config(Config { cases: 64, failure_persistence: None, ..Config::default() })]

    /// Any D of the D+P blocks rebuild the data blocks (Reed–Solomon and
    /// mirroring), whichever blocks are lost.
    #[test]
    fn any_d_blocks_rebuild_the_span(size in 1usize..5000, parity in parity(), lost_seed in any::<u64>(), seed in any::<u8>()) {
        let span: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect();
        let layout = SpanLayout::new(size as u64, parity).unwrap();
        let mut parity_blocks = vec![Vec::new(); parity.parity_blocks()];
        layout.encode_parity(&span, &mut parity_blocks).unwrap();
        let mut full: Vec<Option<Vec<u8>>> = (0..parity.data_blocks())
            .map(|i| {
                let range = layout.data_block_range(i);
                Some(span[range.start as usize..range.end as usize].to_vec())
            })
            .collect();
        full.extend(parity_blocks.into_iter().map(Some));
        for (index, block) in full.iter().enumerate() {
            prop_assert_eq!(block.as_ref().unwrap().len() as u64, layout.block_size(index));
        }
        // Lose P blocks chosen by the seed (a random subset of size P).
        let mut order: Vec<usize> = (0..parity.total_blocks()).collect();
        let mut state = lost_seed | 1;
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut damaged = full.clone();
        for &lost in order.iter().take(parity.parity_blocks()) {
            damaged[lost] = None;
        }
        layout.reconstruct(&mut damaged).unwrap();
        prop_assert_eq!(&damaged[..parity.data_blocks()], &full[..parity.data_blocks()]);
    }
}

#[test]
fn every_kind_code_is_unique_and_privilege_matches_the_high_bit() {
    let mut seen = std::collections::HashSet::new();
    for &kind in ShardKind::ALL {
        assert!(seen.insert(kind as u8), "{kind:?}");
        assert_eq!(ShardKind::from_u8(kind as u8), Some(kind));
        assert_eq!(kind.is_privileged(), kind as u8 >= 0x80);
        assert_ne!(kind as u8, datagram::KIND_ERROR);
    }
    for &kind in CdcKind::ALL {
        assert_eq!(CdcKind::from_u8(kind as u8), Some(kind));
        assert!(!kind.is_privileged());
        assert_ne!(kind as u8, datagram::KIND_ERROR);
    }
    for &kind in ShuckleKind::ALL {
        assert_eq!(ShuckleKind::from_u8(kind as u8), Some(kind));
        assert_eq!(kind.is_privileged(), kind as u8 >= 0x80);
        assert_ne!(kind as u8, datagram::KIND_ERROR);
    }
    // The three families' magics differ, so no datagram is misread.
    assert_ne!(datagram::SHARD_MAGIC, datagram::CDC_MAGIC);
    assert_ne!(datagram::SHARD_MAGIC, datagram::SHUCKLE_MAGIC);
    assert_ne!(datagram::CDC_MAGIC, datagram::SHUCKLE_MAGIC);
}

#[test]
fn span_layout_refuses_what_it_cannot_lay_out() {
    let four_two = Parity::new(4, 2).unwrap();
    assert!(SpanLayout::new(0, four_two).is_err());
    assert!(SpanLayout::new(4 * BLOCK_SIZE_BYTES_MAX as u64 + 1, four_two).is_err());
    assert!(SpanLayout::new(10, Parity::NONE).is_err());
    let layout = SpanLayout::new(100, four_two).unwrap();
    assert!(layout.reconstruct(&mut [None, None, None]).is_err());
    assert!(layout.encode_parity(&[0; 99], &mut [Vec::new(), Vec::new()]).is_err());
    assert!(layout.encode_parity(&[0; 100], &mut [Vec::new()]).is_err());
    let mut wrong_size: Vec<Option<Vec<u8>>> = vec![Some(vec![0; 24]), None, None, None, None, None];
    assert!(layout.reconstruct(&mut wrong_size).is_err());
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    /// A name that breaks a rule (empty, `.`, `..`, a `/` or NUL anywhere, not
    /// UTF-8) makes the whole datagram a decode error.
    #[test]
    fn invalid_names_are_refused_in_datagrams(
        text in name_text(),
        position in any::<proptest::sample::Index>(),
        breakage in 0usize..6,
    ) {
        let mut name = text.into_bytes();
        let at = position.index(name.len() + 1);
        match breakage {
            0 => name.insert(at, b'/'),
            1 => name.insert(at, 0),
            2 => name.insert(at, 0xff),
            3 => name = b".".to_vec(),
            4 => name = b"..".to_vec(),
            _ => name.clear(),
        }
        // delete_file: header, parent, then the name with its u8 length.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&datagram::SHARD_MAGIC);
        bytes.push(PROTOCOL_VERSION);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(ShardKind::DeleteFile as u8);
        bytes.extend_from_slice(&InodeId::ROOT.get().to_le_bytes());
        bytes.push(name.len().min(255) as u8);
        bytes.extend_from_slice(&name);
        let result = datagram::decode::<ShardRequest>(&bytes, None);
        prop_assert!(result.is_err(), "{:?} accepted as a name", name);
        prop_assert!(Name::new(&name).is_err());
    }
}

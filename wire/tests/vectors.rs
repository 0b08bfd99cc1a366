//! Byte-exact vectors: whole messages written out by hand in hex.
//!
//! The MACs, key wrapping, cookie and block service id below were computed
//! independently of this crate (Python's `cryptography` AES with the
//! definitions of PROTOCOL.md), so these tests pin the wire format to the
//! document, not to whatever the code happens to produce.

mod common;

use common::hex;
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::U64;

use wire::block::{self, BlockRequest, BlockServiceStats};
use wire::cdc::{CdcRequest, MkDirReq, MkDirReqHead};
use wire::codec::{DecodeError, List, Name, Payload};
use wire::datagram::{self, ErrorKind, ErrorResp};
use wire::hash::HashMode;
use wire::ids::{BlockId, BlockServiceId, EggsTime, InodeId};
use wire::mac::{MacKey, SecretKey, block_service_id};
use wire::policy::Policy;
use wire::shard::*;
use wire::shuckle::{Registration, RegistrationDatagram, ShardsReq, ShuckleRequest, is_registration};
use wire::span::{Parity, SpanBody};

/// The FIPS-197 appendix C.1 key, as a block service key.
fn block_key() -> MacKey {
    MacKey::new(&SecretKey(hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap()))
}

/// The FIPS-197 appendix B key, as the cluster key.
fn cluster_key() -> MacKey {
    MacKey::new(&SecretKey(hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap()))
}

const BLOCK_ID: BlockId = BlockId::new(0x0123_4567_89ab_cdef);
const REQUEST_ID: u64 = 0x0102_0304_0506_0708;

fn encode<'a, B: datagram::Body<'a>>(body: &B, key: Option<&MacKey>) -> Vec<u8> {
    let mut buf = [0u8; 1472];
    let len = datagram::encode(&mut buf, REQUEST_ID, body, key).expect("encode");
    buf[..len].to_vec()
}

/// The send time in the privileged vectors.
const SENT_AT: EggsTime = EggsTime::new(0x17a2_b3c4_d5e6_f708);

fn encode_privileged<'a, B: datagram::Body<'a>>(body: &B) -> Vec<u8> {
    let mut buf = [0u8; 1472];
    let len = datagram::encode_at(&mut buf, REQUEST_ID, body, Some(&cluster_key()), SENT_AT).expect("encode");
    buf[..len].to_vec()
}

#[test]
fn block_write_request() {
    let expected = hex("77 efcdab8967452301 efbeadde 00100000 9a49cfdae3120b3b");
    let req = block::WriteReq::new(&block_key(), BLOCK_ID, 0xdead_beef, 4096);
    assert_eq!(req.as_bytes(), &expected[..]);
    assert_eq!(BlockRequest::decode(&expected), Ok(BlockRequest::Write(req)));
    assert!(req.certificate_valid(&block_key()));
}

#[test]
fn block_write_response() {
    let expected = hex("57 efcdab8967452301 027646e0a39f5ea6");
    assert_eq!(block::WriteResp::new(&block_key(), BLOCK_ID).as_bytes(), &expected[..]);
}

#[test]
fn block_error_answer() {
    // Our extension (PROTOCOL.md §8): tag 0x00, block id, error kind u16
    // (24 = NO_SPACE), six zero bytes: as long as the proof it replaces.
    let expected = hex("00 0201000000000000 1800 000000000000");
    let answer = block::BlockErrorResp::new(wire::BlockId::new(0x0102), wire::ErrorKind::NoSpace);
    assert_eq!(answer.as_bytes(), &expected[..]);
    assert_eq!(expected.len(), std::mem::size_of::<block::WriteResp>());
    assert_eq!(block::BlockErrorResp::decode(&expected), Some((wire::BlockId::new(0x0102), wire::ErrorKind::NoSpace)));
}

#[test]
fn block_fetch_request_and_response() {
    let expected = hex("66 efcdab8967452301");
    assert_eq!(block::FetchReq::new(BLOCK_ID).as_bytes(), &expected[..]);
    assert_eq!(BlockRequest::decode(&expected), Ok(BlockRequest::Fetch(block::FetchReq::new(BLOCK_ID))));
    assert_eq!(block::FetchRespHead::new(4096).as_bytes(), &hex("46 00100000")[..]);
}

#[test]
fn block_crc_request_and_response() {
    let expected = hex("63 efcdab8967452301");
    assert_eq!(block::CrcReq::new(BLOCK_ID).as_bytes(), &expected[..]);
    assert_eq!(BlockRequest::decode(&expected), Ok(BlockRequest::Crc(block::CrcReq::new(BLOCK_ID))));
    assert_eq!(block::CrcResp::new(4096, 0xdead_beef).as_bytes(), &hex("43 00100000 efbeadde")[..]);
}

#[test]
fn block_erase_request_and_response() {
    let expected = hex("65 efcdab8967452301 6d25ebf010a9e034");
    let req = block::EraseReq::new(&block_key(), BLOCK_ID);
    assert_eq!(req.as_bytes(), &expected[..]);
    assert_eq!(BlockRequest::decode(&expected), Ok(BlockRequest::Erase(req)));
    let expected = hex("45 efcdab8967452301 c3b3546e17c6fb4a");
    assert_eq!(block::EraseResp::new(&block_key(), BLOCK_ID).as_bytes(), &expected[..]);
}

#[test]
fn block_stats_request_and_response() {
    let token = [1, 2, 3, 4, 5, 6, 7, 8];
    let expected = hex("73 0102030405060708");
    assert_eq!(block::StatsReq::new(token).as_bytes(), &expected[..]);
    assert_eq!(BlockRequest::decode(&expected), Ok(BlockRequest::Stats(block::StatsReq::new(token))));
    let expected = hex("53 0102030405060708
         0100000000000000 0200000000000000 0300000000000000 0400000000000000
         3ea981e2613f74f5");
    let stats = BlockServiceStats { used_bytes: 1, free_bytes: 2, used_blocks: 3, free_blocks: 4 };
    let resp = block::StatsResp::new(&block_key(), token, stats);
    assert_eq!(resp.as_bytes(), &expected[..]);
    assert_eq!(resp.verify(&block_key(), token), Some(stats));
}

#[test]
fn registration_datagram() {
    let expected = hex("000102030405060708090a0b0c0d0e0f a00f 02");
    let datagram = RegistrationDatagram {
        registration: Registration {
            secret_key: hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap(),
            port: 4000.into(),
            storage_class: 2,
        },
        host: None,
    };
    let mut buf = [0u8; 128];
    let len = datagram.encode(&mut buf).unwrap();
    assert_eq!(&buf[..len], &expected[..]);
    assert_eq!(RegistrationDatagram::decode(&expected), Ok(datagram));
    assert!(is_registration(&expected));

    // With the optional host name (u8 length, then the bytes).
    let expected_with_host = [&expected[..], &hex("05"), b"rack7"].concat();
    let with_host = RegistrationDatagram { host: Some(wire::codec::Blob::new(b"rack7").unwrap()), ..datagram };
    let len = with_host.encode(&mut buf).unwrap();
    assert_eq!(&buf[..len], &expected_with_host[..]);
    assert_eq!(RegistrationDatagram::decode(&expected_with_host), Ok(with_host));
    assert!(is_registration(&expected_with_host));
}

#[test]
fn datagram_header_of_a_public_request() {
    // magic "EGS", version 2, request id LE, kind 0x02 (stat), inode LE.
    let expected = hex("454753 02 0807060504030201 02 0000000000002000");
    let request = ShardRequest::Stat(StatReq { inode: InodeId::ROOT });
    assert_eq!(encode(&request, None), expected);
    let (header, decoded) = datagram::decode::<ShardRequest>(&expected, None).unwrap();
    assert_eq!(header.request_id(), REQUEST_ID);
    assert_eq!(header.kind, 0x02);
    assert_eq!(decoded, request);
}

#[test]
fn resolve_request_with_a_name() {
    // mode 0 (alive), parent root, creation time 0, name "hello" (u8 length).
    let expected = hex("454753 02 0807060504030201 01 00 0000000000002000 0000000000000000 05 68656c6c6f");
    let request = ShardRequest::Resolve(ResolveReq {
        head: ResolveReqHead { mode: ResolveMode::Alive, parent: InodeId::ROOT, creation_time: Default::default() },
        name: Name::new(b"hello").unwrap(),
    });
    assert_eq!(encode(&request, None), expected);
    assert_eq!(datagram::decode::<ShardRequest>(&expected, None).unwrap().1, request);
}

#[test]
fn error_response() {
    // Kind 0x00, error kind u16 LE (9 = NOT_FOUND), text with a u8 length.
    let expected = hex("454753 02 0807060504030201 00 0900 0c 6e6f20737563682066696c65");
    let response = ShardResponse::Error(ErrorResp::new(ErrorKind::NotFound, "no such file"));
    assert_eq!(encode(&response, None), expected);
    assert_eq!(datagram::decode::<ShardResponse>(&expected, None).unwrap().1, response);
}

#[test]
fn error_kind_codes() {
    let codes: Vec<(u16, &str)> = ErrorKind::ALL.iter().map(|&kind| (kind as u16, kind.name())).collect();
    assert_eq!(&codes[..3], &[(1, "TOO_SOON"), (2, "ALREADY_EXISTS"), (3, "NAME_TOO_LONG")]);
    assert_eq!(ErrorKind::from_u16(16), Some(ErrorKind::BadRequestIdempotentHint));
    assert_eq!(ErrorKind::from_u16(0), None);
    // Codes are dense from 1: a new kind is appended, never inserted.
    for (index, (code, _)) in codes.iter().enumerate() {
        assert_eq!(*code as usize, index + 1);
    }
}

#[test]
fn privileged_shard_request_with_its_mac() {
    // set_parent (0x82): dir 0x0020000000000005, parent root, the send time
    // SENT_AT, then MAC(cluster key, u32 LE length of the 37 bytes before ‖
    // those bytes).
    let expected =
        hex("454753 02 0807060504030201 82 0500000000002000 0000000000002000 08f7e6d5c4b3a217 30e3699aea79cf2a");
    let request =
        ShardRequest::SetParent(SetParentReq { dir: InodeId::new(0x0020_0000_0000_0005), parent: InodeId::ROOT });
    assert_eq!(encode_privileged(&request), expected);
    assert_eq!(datagram::decode::<ShardRequest>(&expected, Some(&cluster_key())).unwrap().1, request);
    assert_eq!(datagram::sent_at(&expected), Some(SENT_AT));
    assert_eq!(datagram::decode::<ShardRequest>(&expected, None).err(), Some(DecodeError::BadMac));
    let mut tampered = expected.clone();
    tampered[13] ^= 1;
    assert_eq!(datagram::decode::<ShardRequest>(&tampered, Some(&cluster_key())).err(), Some(DecodeError::BadMac));
}

#[test]
fn privileged_shard_response_with_its_mac() {
    let expected = hex("454753 02 0807060504030201 81 0700000000004000 08f7e6d5c4b3a217 764e20cd37282b57");
    let response =
        ShardResponse::CreateUnlinkedDir(CreateUnlinkedDirResp { inode: InodeId::new(0x0040_0000_0000_0007) });
    assert_eq!(encode_privileged(&response), expected);
    assert_eq!(datagram::decode::<ShardResponse>(&expected, Some(&cluster_key())).unwrap().1, response);
}

#[test]
fn add_eden_span_with_blocks() {
    // inode, cookie, offset, size, crc; then storage class 2, parity 0x12
    // (D=2, P=1), u16 count 3, and (crc, size) per block.
    let expected = hex("454753 02 0807060504030201 05
         0300000000002020 0102030405060708 0000100000000000 00200000 44332211
         02 12 0300
         aaaaaaaa 00100000  bbbbbbbb 00100000  cccccccc 00100000
         0200 0900000000000000 0a0b000000000000");
    let blocks = [
        NewBlock { crc: 0xaaaa_aaaa.into(), size: 4096.into() },
        NewBlock { crc: 0xbbbb_bbbb.into(), size: 4096.into() },
        NewBlock { crc: 0xcccc_cccc.into(), size: 4096.into() },
    ];
    let blacklist = [BlockServiceId::new(9), BlockServiceId::new(0x0b0a)];
    let request = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: InodeId::new(0x2020_0000_0000_0003),
            cookie: [1, 2, 3, 4, 5, 6, 7, 8],
            offset: U64::new(1 << 20),
            size: 8192.into(),
            crc: 0x1122_3344.into(),
        },
        body: SpanBody::Blocks { storage_class: 2, parity: Parity::new(2, 1).unwrap(), blocks: List::new(&blocks) },
        blacklist: List::new(&blacklist),
    });
    assert_eq!(encode(&request, None), expected);
    assert_eq!(datagram::decode::<ShardRequest>(&expected, None).unwrap().1, request);

    // A block count other than D+P is refused (the third block removed:
    // bytes 65..73, before the blacklist).
    let mut wrong_count = expected.clone();
    wrong_count[47] = 2;
    wrong_count.drain(65..73);
    assert_eq!(
        datagram::decode::<ShardRequest>(&wrong_count, None).err(),
        Some(DecodeError::InvalidField("block count ≠ D+P"))
    );
}

#[test]
fn add_eden_span_inline_and_zero_fill() {
    let head = AddEdenSpanReqHead {
        inode: InodeId::new(0x2020_0000_0000_0003),
        cookie: [0; 8],
        offset: U64::new(0),
        size: 2.into(),
        crc: 0.into(),
    };
    // Storage class 0, u16 length, the bytes; then the empty blacklist.
    let inline = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head,
        body: SpanBody::Inline(Payload::new(b"hi").unwrap()),
        blacklist: List::empty(),
    });
    let encoded = encode(&inline, None);
    assert_eq!(&encoded[13 + 32..], &hex("00 0200 6869 0000")[..]);
    // Storage class 1, nothing else; then a blacklist of one service.
    let blacklist = [BlockServiceId::new(0x0102_0304_0506_0708)];
    let zero_fill =
        ShardRequest::AddEdenSpan(AddEdenSpanReq { head, body: SpanBody::ZeroFill, blacklist: List::new(&blacklist) });
    let encoded = encode(&zero_fill, None);
    assert_eq!(&encoded[13 + 32..], &hex("01 0100 0807060504030201")[..]);
    assert_eq!(datagram::decode::<ShardRequest>(&encoded, None).unwrap().1, zero_fill);
    // A blacklist count beyond the bytes sent is refused.
    let mut short = encoded.clone();
    short.truncate(short.len() - 1);
    assert!(datagram::decode::<ShardRequest>(&short, None).is_err());
}

#[test]
fn cdc_and_shuckle_magics() {
    let mkdir =
        CdcRequest::MkDir(MkDirReq { head: MkDirReqHead { parent: InodeId::ROOT }, name: Name::new(b"d").unwrap() });
    assert_eq!(encode(&mkdir, None), hex("454743 02 0807060504030201 01 0000000000002000 01 64"));
    let shards = ShuckleRequest::Shards(ShardsReq { begin: 7 });
    assert_eq!(encode(&shards, None), hex("45474b 02 0807060504030201 01 07"));
}

#[test]
fn policy_blob() {
    let policy = Policy::new(2, Parity::new(4, 2).unwrap(), 4 << 20).unwrap();
    assert_eq!(policy.encode(), [0x01, 0x02, 0x24, 0x00, 0x00, 0x00, 0x40, 0x00]);
}

#[test]
fn key_material() {
    let block_secret = SecretKey(hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap());
    // id = u64 LE of MAC(key, "eggsfs block service id").
    let id = block_service_id(&block_secret);
    assert_eq!(id.get(), 0x215c_4661_4e81_4403);
    // wrapped = key XOR AES(cluster key, id LE ‖ nonce LE).
    let wrapped = cluster_key().wrap_key(&block_secret, id, 0x1122_3344_5566_7788);
    assert_eq!(wrapped.0.to_vec(), hex("7e6762ea7be87e77276c20eff4a2e7f6"));
    // cookie = MAC(shard secret, "cookie" ‖ inode LE).
    assert_eq!(cluster_key().eden_cookie(InodeId::new(0x2020_0000_0000_0003)).to_vec(), hex("16e50a057978afcf"));
    // The MAC of nothing is the first half of AES(k, 0¹²⁸).
    assert_eq!(block_key().mac(&[]).to_vec(), hex("c6a13b37878f5b82"));
}

#[test]
fn name_hash() {
    // The first 8 bytes of MD5("hello") = 5d41402abc4b2a76…, read LE.
    assert_eq!(HashMode::Md5Prefix.hash(b"hello"), 0x762a_4bbc_2a40_415d);
}

/// The fixed sizes PROTOCOL.md gives for every fixed part.
#[test]
fn fixed_layout_sizes_match_protocol_md() {
    use core::mem::size_of;
    use wire::{cdc, shuckle};
    let sizes: &[(&str, usize, usize)] = &[
        ("Header", size_of::<datagram::Header>(), 13),
        ("Address", size_of::<wire::Address>(), 18),
        ("ResolveReqHead", size_of::<ResolveReqHead>(), 17),
        ("ResolveResp", size_of::<ResolveResp>(), 16),
        ("StatReq", size_of::<StatReq>(), 8),
        ("StatDirectoryHead", size_of::<StatDirectoryHead>(), 17),
        ("StatFile", size_of::<StatFile>(), 16),
        ("LsDirReq", size_of::<LsDirReq>(), 25),
        ("LsEntryHead", size_of::<LsEntryHead>(), 24),
        ("LsDirRespHead", size_of::<LsDirRespHead>(), 9),
        ("CreateEdenFileReq", size_of::<CreateEdenFileReq>(), 1),
        ("CreateEdenFileResp", size_of::<CreateEdenFileResp>(), 16),
        ("AddEdenSpanReqHead", size_of::<AddEdenSpanReqHead>(), 32),
        ("NewBlock", size_of::<NewBlock>(), 8),
        ("BlockCertificate", size_of::<BlockCertificate>(), 42),
        ("CertifyEdenSpanReqHead", size_of::<CertifyEdenSpanReqHead>(), 24),
        ("LinkEdenFileReqHead", size_of::<LinkEdenFileReqHead>(), 24),
        ("FetchSpansReq", size_of::<FetchSpansReq>(), 16),
        ("FetchSpansRespHead", size_of::<FetchSpansRespHead>(), 8),
        ("FetchedSpanHead", size_of::<FetchedSpanHead>(), 16),
        ("FetchedBlock", size_of::<FetchedBlock>(), 43),
        ("ExpungeEdenSpanRespHead", size_of::<ExpungeEdenSpanRespHead>(), 8),
        ("CertifyExpungeReqHead", size_of::<CertifyExpungeReqHead>(), 16),
        ("PurgeDirentReqHead", size_of::<PurgeDirentReqHead>(), 16),
        ("RepairSpansReq", size_of::<RepairSpansReq>(), 32),
        ("RepairBlockReq", size_of::<RepairBlockReq>(), 33),
        ("EdenEntry", size_of::<EdenEntry>(), 16),
        ("ReverseBlockQueryReq", size_of::<ReverseBlockQueryReq>(), 16),
        ("ReverseBlockEntry", size_of::<ReverseBlockEntry>(), 24),
        ("CreateUnlinkedDirReq", size_of::<CreateUnlinkedDirReq>(), 24),
        ("SetParentReq", size_of::<SetParentReq>(), 16),
        ("InjectDirentReqHead", size_of::<InjectDirentReqHead>(), 34),
        ("AcquireDirentReqHead", size_of::<AcquireDirentReqHead>(), 25),
        ("AcquireDirentResp", size_of::<AcquireDirentResp>(), 16),
        ("ReleaseDirentReqHead", size_of::<ReleaseDirentReqHead>(), 17),
        ("PurgeRemoteOwningDirentReqHead", size_of::<PurgeRemoteOwningDirentReqHead>(), 16),
        ("CreateLinkedDirReqHead", size_of::<CreateLinkedDirReqHead>(), 24),
        ("CreateLinkedDirResp", size_of::<CreateLinkedDirResp>(), 16),
        ("MoveFileInShardReqHead", size_of::<MoveFileInShardReqHead>(), 32),
        ("MoveFileInShardResp", size_of::<MoveFileInShardResp>(), 16),
        ("MvFileReqHead", size_of::<cdc::MvFileReqHead>(), 16),
        ("PurgeRemoteFileReqHead", size_of::<cdc::PurgeRemoteFileReqHead>(), 16),
        ("CdcRespHead", size_of::<cdc::CdcRespHead>(), 9),
        ("ShardInfo", size_of::<shuckle::ShardInfo>(), 27),
        ("shuckle CdcResp", size_of::<shuckle::CdcResp>(), 26),
        ("BlockServiceInfoHead", size_of::<shuckle::BlockServiceInfoHead>(), 69),
        ("BlockServicesWithKeysReq", size_of::<shuckle::BlockServicesWithKeysReq>(), 24),
        ("BlockServiceWithKeyHead", size_of::<shuckle::BlockServiceWithKeyHead>(), 52),
        ("RegisterShardReq", size_of::<shuckle::RegisterShardReq>(), 27),
        ("RegisterCdcReq", size_of::<shuckle::RegisterCdcReq>(), 26),
    ];
    for &(name, actual, documented) in sizes {
        assert_eq!(actual, documented, "{name}");
    }
}

/// The parity bytes are on disk forever, so the Reed–Solomon code must never
/// change under us (a reed-solomon-simd upgrade that changed its output would
/// make stored parity useless). These CRCs were produced by this crate with
/// reed-solomon-simd 3.1 and are pinned, not independently derived.
#[test]
fn reed_solomon_parity_is_pinned() {
    use wire::crc::crc32c;
    use wire::span::SpanLayout;
    let span: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let mut pinned = Vec::new();
    for (d, p) in [(4u8, 2u8), (10, 4), (3, 2), (1, 2)] {
        let layout = SpanLayout::new(span.len() as u64, Parity::new(d, p).unwrap()).unwrap();
        let mut parity = vec![Vec::new(); p as usize];
        layout.encode_parity(&span, &mut parity).unwrap();
        for block in &parity {
            assert_eq!(block.len() as u64, layout.parity_block_size);
            pinned.push((d, p, block.len(), crc32c(block)));
        }
    }
    assert_eq!(pinned, PINNED_PARITY);
    assert_eq!(crc32c(&span), 0x7604_7627);
}

/// (D, P, parity block bytes, CRC32C of the parity block), in block order.
/// Mirrored copies (1+2) are the span itself.
const PINNED_PARITY: &[(u8, u8, usize, u32)] = &[
    (4, 2, 256, 0x46e4_ce75),
    (4, 2, 256, 0x36e6_dd40),
    (10, 4, 128, 0xe9e9_1bd8),
    (10, 4, 128, 0x9892_93ef),
    (10, 4, 128, 0x77b9_1044),
    (10, 4, 128, 0x11b0_cbd8),
    (3, 2, 384, 0xc732_5b1a),
    (3, 2, 384, 0x0562_e4d7),
    (1, 2, 1000, 0x7604_7627),
    (1, 2, 1000, 0x7604_7627),
];

/// The examples of PROTOCOL.md §12.
#[test]
fn span_layout_examples() {
    use wire::span::SpanLayout;
    let layout = SpanLayout::new(1000, Parity::new(4, 2).unwrap()).unwrap();
    assert_eq!((layout.data_block_size, layout.parity_block_size), (250, 256));
    let layout = SpanLayout::new(1000, Parity::new(3, 2).unwrap()).unwrap();
    assert_eq!((layout.data_block_size, layout.parity_block_size), (334, 384));
    assert_eq!([layout.block_size(0), layout.block_size(1), layout.block_size(2)], [334, 334, 332]);
    let layout = SpanLayout::new(5, Parity::new(8, 2).unwrap()).unwrap();
    let sizes: Vec<u64> = (0..10).map(|i| layout.block_size(i)).collect();
    assert_eq!(sizes, [1, 1, 1, 1, 1, 0, 0, 0, 64, 64]);
    let layout = SpanLayout::new(1000, Parity::new(1, 2).unwrap()).unwrap();
    assert_eq!((layout.block_size(0), layout.block_size(1), layout.block_size(2)), (1000, 1000, 1000));
}

//! Write certificates and write proofs against REAL block services: shuckle,
//! three blockd and metad, all real binaries on port 0 in a temporary folder.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wire::block::{FetchReq, FetchRespHead, WriteReq, WriteResp};
use wire::codec::List;
use wire::crc::crc32c;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::mac::Mac;
use wire::shard::*;
use wire::span::SpanBody;
use wire::{ErrorKind, Name, Parity};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Sends a write with the shard's certificate; the block service's proof.
fn write_block(certificate: &BlockCertificate, crc: u32, data: &[u8]) -> Mac {
    let mut stream = TcpStream::connect(certificate.address.socket_addr()).expect("connect to blockd");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = WriteReq::with_certificate(certificate.block_id, crc, data.len() as u32, certificate.certificate);
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(data).unwrap();
    let mut response = [0u8; 17];
    stream.read_exact(&mut response).expect("blockd accepted the certificate");
    let response = WriteResp::read_from_bytes(&response).unwrap();
    assert_eq!(response.block_id, certificate.block_id);
    response.proof
}

fn fetch_block(address: std::net::SocketAddr, block_id: wire::BlockId) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(FetchReq::new(block_id).as_bytes()).unwrap();
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).unwrap();
    let head = FetchRespHead::read_from_bytes(&head).unwrap();
    let mut data = vec![0u8; head.size.get() as usize];
    stream.read_exact(&mut data).unwrap();
    data
}

#[test]
fn certificates_and_proofs_with_real_block_services() {
    let shuckle_binary = binary("shuckle");
    let blockd_binary = binary("blockd");
    assert!(
        shuckle_binary.exists() && blockd_binary.exists(),
        "build shuckle and blockd first (cargo test --workspace does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let key_file = root.join("cluster.key");
    let key_arg = key_file.to_str().unwrap();
    let shuckle = Daemon::start(
        &shuckle_binary,
        &[
            "--data-dir",
            root.join("shuckle").to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--udp",
            "127.0.0.1:0",
            "--key-file",
            key_arg,
        ],
    );
    let shuckle_udp = shuckle.address("udp").to_string();
    let _block_services: Vec<Daemon> = (0..3)
        .map(|i| {
            let folder = root.join(format!("block{i}"));
            let host = format!("host{i}");
            Daemon::start(
                &blockd_binary,
                &[
                    folder.to_str().unwrap(),
                    "--storage-class",
                    "2",
                    "--shuckle",
                    &shuckle_udp,
                    "--host",
                    &host,
                    "--cores",
                    "1",
                ],
            )
        })
        .collect();
    let metad = start_metad(1, root, Some(shuckle.address("udp")));
    let key = cluster_key(root);
    let mut client = Client::new(metad.address("udp"), &key);

    let bytes = client.call(&ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File }));
    let ShardResponse::CreateEdenFile(created) = decode(&bytes, &client.key) else { panic!() };
    let data = b"a block stored three times on three hosts".repeat(100);
    let crc = crc32c(&data);
    let parity = Parity::new(1, 2).unwrap();
    let blocks = [NewBlock { crc: U32::new(crc), size: U32::new(data.len() as u32) }; 3];
    let add = ShardRequest::AddEdenSpan(AddEdenSpanReq {
        head: AddEdenSpanReqHead {
            inode: created.inode,
            cookie: created.cookie,
            offset: U64::new(0),
            size: U32::new(data.len() as u32),
            crc: U32::new(crc),
        },
        body: SpanBody::Blocks { storage_class: 2, parity, blocks: List::new(&blocks) },
        blacklist: List::empty(),
    });
    // Until shuckle has checked the block services and metad has fetched
    // them, placement fails (and triggers a refresh).
    let started = Instant::now();
    let certificates: Vec<BlockCertificate> = loop {
        let bytes = client.call(&add);
        match decode(&bytes, &client.key) {
            ShardResponse::AddEdenSpan(response) => break response.blocks.iter().collect(),
            ShardResponse::Error(error) if error.kind == ErrorKind::NotEnoughBlockServices => {
                assert!(started.elapsed() < Duration::from_secs(60), "block services never showed up: {error:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(certificates.len(), 3);
    let mut hosts: Vec<_> = certificates.iter().map(|c| c.address).collect();
    hosts.sort_by_key(|a| a.socket_addr());
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "three distinct block services");

    let proofs: Vec<Mac> = certificates.iter().map(|c| write_block(c, crc, &data)).collect();
    let certify = |proofs| {
        ShardRequest::CertifyEdenSpan(CertifyEdenSpanReq {
            head: CertifyEdenSpanReqHead { inode: created.inode, cookie: created.cookie, offset: U64::new(0) },
            proofs: List::new(proofs),
        })
    };
    let mut forged = proofs.clone();
    forged[2] = [0; 8];
    let bytes = client.call(&certify(&forged));
    assert!(matches!(decode(&bytes, &client.key), ShardResponse::Error(e) if e.kind == ErrorKind::NotAuthorised));
    let bytes = client.call(&certify(&proofs));
    assert!(
        matches!(decode(&bytes, &client.key), ShardResponse::CertifyEdenSpan(_)),
        "{:?}",
        decode(&bytes, &client.key)
    );

    let link = ShardRequest::LinkEdenFile(LinkEdenFileReq {
        head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
        name: Name::new(b"stored").unwrap(),
    });
    assert!(matches!(decode(&client.call(&link), &client.key), ShardResponse::LinkEdenFile(_)));
    // Read back through fetch_spans: each listed block holds the bytes.
    let bytes = client.call(&ShardRequest::FetchSpans(FetchSpansReq { inode: created.inode, offset: U64::new(0) }));
    let ShardResponse::FetchSpans(spans) = decode(&bytes, &client.key) else { panic!() };
    let SpanBody::Blocks { blocks, .. } = spans.spans.get(0).unwrap().body else { panic!() };
    for block in blocks.iter() {
        assert_eq!(block.flags, 0);
        assert_eq!(fetch_block(block.address.socket_addr(), block.block_id), data);
    }
    let _ = EggsTime::now();
}

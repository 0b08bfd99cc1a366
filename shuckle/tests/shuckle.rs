//! Shuckle end to end: the real binary, fake block services with real keys,
//! real UDP and HTTP.

mod common;

use std::time::Duration;

use common::*;
use wire::EggsTime;
use wire::address::Address;
use wire::datagram::SHUCKLE_MAGIC;
use wire::mac::{MacKey, SecretKey, block_service_id};
use wire::shuckle::{
    BlockServicesReq, BlockServicesWithKeysReq, CdcReq, RegisterCdcReq, RegisterShardReq, ShardsReq, ShuckleRequest,
    ShuckleResponse, flags,
};
use wire::{BlockServiceId, ErrorKind};
use zerocopy::byteorder::little_endian::U64;

fn test_key(seed: u8) -> SecretKey {
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = seed.wrapping_mul(31).wrapping_add((i as u8).wrapping_mul(67)) ^ 0xa5;
    }
    SecretKey(key)
}

fn wait_listed(shuckle: &ShuckleProcess, id: &str) -> serde_json::Value {
    wait_for("the block service to be listed", || listed(shuckle.http, id))
}

#[test]
fn registration_is_checked_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let service = FakeBlockService::start(test_key(1), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 2, Some("rack7-disk3"));
    let listed = wait_listed(&shuckle, &service.id_hex());
    assert_eq!(listed["addr"], service.addr.to_string());
    assert_eq!(listed["host"], "rack7-disk3");
    assert_eq!(listed["storage_class"], 2);
    assert_eq!(listed["status"], "ok");
    assert_eq!(listed["stale"], false);
    assert_eq!(listed["used_bytes"], service.stats.used_bytes);
    assert_eq!(listed["free_bytes"], service.stats.free_bytes);
    assert_eq!(listed["blocks"], service.stats.used_blocks);
    assert!(listed["last_check"].as_u64().unwrap() > 1_600_000_000_000, "{listed}");
    assert!(listed["last_check_ago"].as_str().unwrap().ends_with("ago"), "{listed}");
    assert!(listed["write_weight"].as_u64().unwrap() > 0, "{listed}");

    // Without a host name, the source IP is the host.
    let second = FakeBlockService::start(test_key(2), Mode::Good);
    register(shuckle.udp, &second.key, second.addr.port(), 3, None);
    assert_eq!(wait_listed(&shuckle, &second.id_hex())["host"], "127.0.0.1");

    // The binary listing says the same, without keys.
    let bytes = udp_exchange(
        shuckle.udp,
        &ShuckleRequest::BlockServices(BlockServicesReq { begin: BlockServiceId::new(0) }),
        None,
    );
    let ShuckleResponse::BlockServices(page) = decode_response(&bytes, None) else { panic!("not a listing") };
    assert_eq!(page.next, BlockServiceId::new(0));
    let info = page.block_services.iter().find(|s| s.id == block_service_id(&service.key)).unwrap();
    assert_eq!(info.address, Address::from(service.addr));
    assert_eq!(info.flags, 0);
    assert_eq!(info.used_bytes.get(), service.stats.used_bytes);
    assert_eq!(info.host.as_str(), "rack7-disk3");
    assert_no_key(&String::from_utf8_lossy(&bytes), &service.key);
}

#[test]
fn silent_block_service_becomes_stale_and_only_then_may_be_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &["--stale-after-secs", "5", "--check-timeout-ms", "1000"]);
    let service = FakeBlockService::start(test_key(3), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 2, None);
    let id = service.id_hex();
    wait_listed(&shuckle, &id);

    let (status, refusal) = post_json(&shuckle, &format!("/api/block_services/{id}/terminate"));
    assert_eq!(status, 409, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("not stale"), "{refusal}");
    assert_eq!(listed(shuckle.http, &id).unwrap()["status"], "ok");

    service.set_mode(Mode::Silent);
    let stale =
        wait_for("the silent service to become stale", || listed(shuckle.http, &id).filter(|s| s["stale"] == true));
    assert_eq!(stale["write_weight"], 0);
    assert_eq!(stale["status"], "ok");

    let (status, terminal) = post_json(&shuckle, &format!("/api/block_services/{id}/terminate"));
    assert_eq!(status, 200, "{terminal}");
    assert_eq!(terminal["status"], "terminal");
    let (status, refusal) = post_json(&shuckle, &format!("/api/block_services/{id}/resume"));
    assert_eq!(status, 409, "{refusal}");
    assert_eq!(listed(shuckle.http, &id).unwrap()["status"], "terminal");

    // Shards see it flagged.
    let request = ShuckleRequest::BlockServices(BlockServicesReq { begin: BlockServiceId::new(0) });
    let bytes = udp_exchange(shuckle.udp, &request, None);
    let ShuckleResponse::BlockServices(page) = decode_response(&bytes, None) else { panic!("not a listing") };
    let info = page.block_services.iter().next().unwrap();
    assert_eq!(info.flags, flags::STALE | flags::TERMINAL);
    assert_eq!(info.write_weight.get(), 0);
}

#[test]
fn drain_and_resume_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let service = FakeBlockService::start(test_key(4), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 2, None);
    let id = service.id_hex();
    wait_listed(&shuckle, &id);

    let (status, drained) = post_json(&shuckle, &format!("/api/block_services/{id}/drain"));
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["status"], "drain");
    assert_eq!(drained["write_weight"], 0);
    let listing = listed(shuckle.http, &id).unwrap();
    assert_eq!(listing["status"], "drain");
    assert_eq!(listing["write_weight"], 0);

    let (status, resumed) = post_json(&shuckle, &format!("/api/block_services/{id}/resume"));
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "ok");
    assert!(listed(shuckle.http, &id).unwrap()["write_weight"].as_u64().unwrap() > 0);

    let (status, body) = post_json(&shuckle, "/api/block_services/0x0000000000000001/drain");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no block service"), "{body}");
    let (status, body) = post_json(&shuckle, &format!("/api/block_services/{id}/explode"));
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_json(&shuckle, "/api/block_services/not-an-id/drain");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_key = MacKey::new(&CLUSTER_KEY);
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let service = FakeBlockService::start(test_key(5), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 4, Some("host-x"));
    let id = service.id_hex();
    wait_listed(&shuckle, &id);
    assert_eq!(post_json(&shuckle, &format!("/api/block_services/{id}/drain")).0, 200);

    let shard_addr: std::net::SocketAddr = "127.0.0.1:22279".parse().unwrap();
    let cdc_addr: std::net::SocketAddr = "127.0.0.1:36137".parse().unwrap();
    let request = ShuckleRequest::RegisterShard(RegisterShardReq {
        shard: 7,
        address: Address::from(shard_addr),
        time: EggsTime::now(),
    });
    let bytes = udp_exchange(shuckle.udp, &request, Some(&cluster_key));
    assert!(matches!(decode_response(&bytes, Some(&cluster_key)), ShuckleResponse::RegisterShard(_)));
    let request =
        ShuckleRequest::RegisterCdc(RegisterCdcReq { address: Address::from(cdc_addr), time: EggsTime::now() });
    let bytes = udp_exchange(shuckle.udp, &request, Some(&cluster_key));
    assert!(matches!(decode_response(&bytes, Some(&cluster_key)), ShuckleResponse::RegisterCdc(_)));

    service.set_mode(Mode::Silent);
    let before = listed(shuckle.http, &id).unwrap();
    shuckle.kill();

    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let after = listed(shuckle.http, &id).expect("the block service was forgotten");
    for field in ["addr", "host", "storage_class", "status", "used_bytes", "free_bytes", "blocks"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(after["status"], "drain");
    assert_eq!(after["host"], "host-x");
    // Round-robin refreshes are stored at most once a minute per service.
    let stored_period_ms = shuckle::service::REFRESH_STORE_PERIOD_NS / 1_000_000;
    assert!(after["last_check"].as_u64().unwrap() + stored_period_ms >= before["last_check"].as_u64().unwrap());

    let shards = get_json(shuckle.http, "/api/shards");
    assert_eq!(shards[0]["shard"], 7);
    assert_eq!(shards[0]["addr"], shard_addr.to_string());
    assert_eq!(get_json(shuckle.http, "/api/cdc")["addr"], cdc_addr.to_string());

    let bytes = udp_exchange(shuckle.udp, &ShuckleRequest::Shards(ShardsReq { begin: 0 }), None);
    let ShuckleResponse::Shards(page) = decode_response(&bytes, None) else { panic!("not shards") };
    assert_eq!(page.next, 0);
    let shard = page.shards.iter().next().unwrap();
    assert_eq!((shard.shard, shard.address.socket_addr()), (7, shard_addr));
    let bytes = udp_exchange(shuckle.udp, &ShuckleRequest::Cdc(CdcReq {}), None);
    let ShuckleResponse::Cdc(cdc) = decode_response(&bytes, None) else { panic!("not cdc") };
    assert_eq!(cdc.address.socket_addr(), cdc_addr);
}

/// Sends `register` until the fake service has been contacted twice: the
/// first check (its result applied) is then certainly over.
fn register_until_checked_twice(shuckle: &ShuckleProcess, service: &FakeBlockService, key: &SecretKey) {
    let start = service.contacts();
    wait_for("two checks of the claimed address", || {
        register(shuckle.udp, key, service.addr.port(), 2, None);
        std::thread::sleep(Duration::from_millis(100));
        (service.contacts() >= start + 2).then_some(())
    });
}

#[test]
fn forged_or_malformed_registrations_and_bad_stats_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut shuckle = ShuckleProcess::start(dir.path(), &[]);
    let genuine = FakeBlockService::start(test_key(6), Mode::Good);
    register(shuckle.udp, &genuine.key, genuine.addr.port(), 2, None);
    let id = genuine.id_hex();
    let before = wait_listed(&shuckle, &id);

    // Someone without the key claims it from another port: MAC'd with the
    // wrong key, or the right MAC over a stale token. Nothing moves.
    let forger = FakeBlockService::start(test_key(7), Mode::WrongKey);
    register_until_checked_twice(&shuckle, &forger, &genuine.key);
    forger.set_mode(Mode::WrongToken);
    register_until_checked_twice(&shuckle, &forger, &forger.key);
    let after = listed(shuckle.http, &id).unwrap();
    assert_eq!(after["addr"], before["addr"]);
    assert_eq!(after["status"], "ok");
    assert!(listed(shuckle.http, &forger.id_hex()).is_none(), "an unverified service was listed");

    // A genuine service whose stats answers stop verifying is not refreshed.
    let drifting = FakeBlockService::start(test_key(8), Mode::Good);
    register(shuckle.udp, &drifting.key, drifting.addr.port(), 2, None);
    wait_listed(&shuckle, &drifting.id_hex());
    drifting.set_mode(Mode::WrongToken);
    // A good check may still be in flight: shuckle checks a service once
    // at a time and records a check before it starts the next, so once the
    // service is contacted again every good answer has been recorded.
    let contacts = drifting.contacts();
    wait_for("a check after the answers went wrong", || (drifting.contacts() > contacts).then_some(()));
    let last_check = listed(shuckle.http, &drifting.id_hex()).unwrap()["last_check"].as_u64().unwrap();
    let contacts = drifting.contacts();
    wait_for("more round-robin checks", || (drifting.contacts() >= contacts + 3).then_some(()));
    assert_eq!(listed(shuckle.http, &drifting.id_hex()).unwrap()["last_check"].as_u64().unwrap(), last_check);

    // Malformed datagrams of every shape.
    let mut header = SHUCKLE_MAGIC.to_vec();
    header.extend_from_slice(&[wire::datagram::PROTOCOL_VERSION, 9, 0, 0, 0, 0, 0, 0, 0]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![0x42; 18],
        {
            let mut class_one = genuine.key.0.to_vec();
            class_one.extend_from_slice(&[1, 2, 1]);
            class_one
        },
        {
            let mut bad_host = genuine.key.0.to_vec();
            bad_host.extend_from_slice(&[1, 2, 2, 200, b'x']);
            bad_host
        },
        vec![0x00; 1472],
        vec![0x17; 4000],
        [&header[..], &[0x7f]].concat(),
        [&header[..], &[0x81, 1, 2, 3]].concat(),
        b"EGS\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01".to_vec(),
    ];
    for datagram in &garbage {
        send_raw(shuckle.udp, datagram);
    }
    // An unknown kind with a readable header gets a decode error back.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket.send_to(&[&header[..], &[0x7f]].concat(), shuckle.udp).unwrap();
    let mut answer = [0u8; 1500];
    let (len, _) = socket.recv_from(&mut answer).unwrap();
    let ShuckleResponse::Error(error) = decode_response_any_id(&answer[..len]) else { panic!("not an error") };
    assert_eq!(error.kind, ErrorKind::DecodeError);

    assert!(shuckle.is_running());
    let bytes = udp_exchange(shuckle.udp, &ShuckleRequest::Cdc(CdcReq {}), None);
    assert!(matches!(decode_response(&bytes, None), ShuckleResponse::Cdc(_)));
    let after = listed(shuckle.http, &id).unwrap();
    assert_eq!(after["addr"], before["addr"]);
    assert_eq!(get_json(shuckle.http, "/api/block_services").as_array().unwrap().len(), 2);
}

fn decode_response_any_id(bytes: &[u8]) -> ShuckleResponse<'_> {
    wire::datagram::decode::<ShuckleResponse>(bytes, None).expect("undecodable").1
}

#[test]
fn privileged_requests_need_the_cluster_key_and_keys_stay_private() {
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let cluster_key = MacKey::new(&CLUSTER_KEY);
    let wrong_key = MacKey::new(&SecretKey([0x33; 16]));
    let service = FakeBlockService::start(test_key(9), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 2, Some("h1"));
    let id = block_service_id(&service.key);
    wait_listed(&shuckle, &service.id_hex());

    let listing = |time: EggsTime| {
        ShuckleRequest::BlockServicesWithKeys(BlockServicesWithKeysReq {
            nonce: U64::new(0x1234_5678),
            time,
            begin: BlockServiceId::new(0),
        })
    };
    let bytes = udp_exchange(shuckle.udp, &listing(EggsTime::now()), Some(&wrong_key));
    let ShuckleResponse::Error(error) = decode_response(&bytes, None) else { panic!("wrong key accepted") };
    assert_eq!(error.kind, ErrorKind::NotAuthorised);
    assert_no_key(&String::from_utf8_lossy(&bytes), &service.key);

    let replayed = EggsTime::now().saturating_sub_ns(120 * wire::limits::NS_PER_SECOND);
    let bytes = udp_exchange(shuckle.udp, &listing(replayed), Some(&cluster_key));
    // The refusal of an authenticated request is itself MAC'd (kind 0x80).
    let ShuckleResponse::Error(error) = decode_response(&bytes, Some(&cluster_key)) else {
        panic!("old request accepted")
    };
    assert_eq!(error.kind, ErrorKind::NotAuthorised);
    assert_eq!(bytes.get(wire::datagram::HEADER_BYTES - 1), Some(&wire::datagram::KIND_PRIVILEGED_ERROR));
    assert!(decode_response_checked_with(&bytes, &wrong_key).is_err(), "refusal not MAC'd");

    let bytes = udp_exchange(shuckle.udp, &listing(EggsTime::now()), Some(&cluster_key));
    // The response is MAC'd with the cluster key: decoding checks it.
    let ShuckleResponse::BlockServicesWithKeys(page) = decode_response(&bytes, Some(&cluster_key)) else {
        panic!("refused")
    };
    let entry = page.block_services.iter().find(|s| s.id == id).unwrap();
    assert_eq!(cluster_key.wrap_key(&SecretKey(entry.wrapped_key), id, 0x1234_5678), service.key);
    assert_eq!(entry.host.as_str(), "h1");
    assert!(entry.write_weight.get() > 0);
    assert_no_key(&String::from_utf8_lossy(&bytes), &service.key);
    assert!(decode_response_checked_with(&bytes, &wrong_key).is_err(), "response not MAC'd");

    let request = ShuckleRequest::RegisterShard(RegisterShardReq {
        shard: 3,
        address: Address::from("127.0.0.1:22275".parse::<std::net::SocketAddr>().unwrap()),
        time: EggsTime::now(),
    });
    let bytes = udp_exchange(shuckle.udp, &request, Some(&wrong_key));
    let ShuckleResponse::Error(error) = decode_response(&bytes, None) else { panic!("wrong key accepted") };
    assert_eq!(error.kind, ErrorKind::NotAuthorised);
    assert_eq!(get_json(shuckle.http, "/api/shards").as_array().unwrap().len(), 0);

    for path in ["/", "/api/block_services", "/api/shards", "/api/cdc"] {
        let (status, body) = http(shuckle.http, "GET", path);
        assert_eq!(status, 200);
        assert_no_key(&body, &service.key);
        assert_no_key(&body, &CLUSTER_KEY);
    }
}

fn decode_response_checked_with<'a>(bytes: &'a [u8], key: &MacKey) -> Result<ShuckleResponse<'a>, wire::DecodeError> {
    wire::datagram::decode::<ShuckleResponse>(bytes, Some(key)).map(|(_, response)| response)
}

/// The real block service, when the workspace built it beside shuckle
/// (`cargo test --workspace` does; CI requires it).
#[test]
fn real_blockd_registers_and_is_verified() {
    let shuckle_binary = std::path::Path::new(env!("CARGO_BIN_EXE_shuckle"));
    let blockd_binary = shuckle_binary.with_file_name("blockd");
    if !blockd_binary.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must build blockd beside shuckle ({})", blockd_binary.display());
        eprintln!("SKIPPED: {} is not built; run `cargo test --workspace`", blockd_binary.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let block_dir = dir.path().join("disk0");
    let mut blockd = std::process::Command::new(&blockd_binary)
        .arg(&block_dir)
        .args(["--storage-class", "2", "--cores", "1", "--host", "real-disk"])
        .arg("--shuckle")
        .arg(shuckle.udp.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(blockd.stdout.take().unwrap());
    let mut addr = None;
    for line in std::io::BufRead::lines(stdout) {
        let line = line.unwrap();
        if let Some(listening) = line.strip_prefix("listening tcp ") {
            addr = Some(listening.to_owned());
        }
        if line == "ready" {
            break;
        }
    }
    let key: [u8; 16] = std::fs::read(block_dir.join("secret.key")).unwrap().try_into().unwrap();
    let id = block_service_id(&SecretKey(key)).to_string();
    let listed = wait_listed(&shuckle, &id);
    let _ = blockd.kill();
    let _ = blockd.wait();
    assert_eq!(listed["addr"].as_str(), addr.as_deref());
    assert_eq!(listed["host"], "real-disk");
    assert_eq!(listed["status"], "ok");
    assert!(listed["free_bytes"].as_u64().unwrap() > 0);
}

/// Issue 17 D, the probe: `curl -X POST …/drain` drained a service with no
/// credential, even from another site's form. Now: no token → 401; the
/// token from another site's form → 403; the token as JSON → 200, drained.
#[test]
fn operator_actions_need_the_token_and_refuse_cross_site_requests() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shuckle = ShuckleProcess::start(dir.path(), &[]);
    let service = FakeBlockService::start(test_key(11), Mode::Good);
    register(shuckle.udp, &service.key, service.addr.port(), 2, None);
    let id = service.id_hex();
    wait_listed(&shuckle, &id);
    let drain = format!("/api/block_services/{id}/drain");
    let status_now = || listed(shuckle.http, &id).unwrap()["status"].as_str().unwrap().to_owned();

    // The probe as it was: no credential, no content type.
    let (status, body) = http(shuckle.http, "POST", &drain);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("operator token"), "{body}");
    let bearer = format!("Bearer {}", shuckle.token);
    let evil = [("Origin", "http://evil.example"), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &evil, "a=b");
    assert_eq!(status, 401, "{body}");
    let evil_with_token = [evil[0], evil[1], ("Authorization", bearer.as_str())];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &evil_with_token, "a=b");
    assert_eq!(status, 403, "{body}");
    let cross_site =
        [("Sec-Fetch-Site", "cross-site"), ("Content-Type", "application/json"), ("Authorization", &bearer)];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &cross_site, "{}");
    assert_eq!(status, 403, "{body}");
    let form_with_token = [("Content-Type", "text/plain"), ("Authorization", bearer.as_str())];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &form_with_token, "{}");
    assert_eq!(status, 415, "{body}");
    let wrong = format!("Bearer {}", "0".repeat(32));
    let wrong_token = [("Content-Type", "application/json"), ("Authorization", wrong.as_str())];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &wrong_token, "{}");
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&shuckle.token), "a refusal shows the token: {body}");
    assert_eq!(status_now(), "ok", "a refused request changed nothing");

    // The operator: token and JSON, from this site or from a script.
    let own_site = format!("http://{}", shuckle.http);
    let script = [("Content-Type", "application/json"), ("Authorization", bearer.as_str()), ("Origin", &own_site)];
    let (status, body) = http_with(shuckle.http, "POST", &drain, &script, "{}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_now(), "drain");

    let token_file = ShuckleProcess::token_file(dir.path());
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(shuckle.token.len(), 32);
    // Reading stays open, and never shows the token.
    for path in ["/", "/api/block_services", "/api/shards", "/api/cdc", "/api/capacity"] {
        let (status, body) = http(shuckle.http, "GET", path);
        assert_ne!(status, 401, "{path} needs no token");
        assert!(!body.to_lowercase().contains(&shuckle.token), "{path} shows the operator token");
    }
}

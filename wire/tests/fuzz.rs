//! Bounded fuzzing inside the normal test suite.
//!
//! A corpus of valid encodings (every kind of every family, requests and
//! responses, errors, block messages, registrations, policies) is mutated —
//! bit flips, truncations, insertions, deletions, length-field corruption,
//! kind and magic swaps, splices — and, half the time, re-MAC'd with the
//! cluster key so mutated privileged bodies get past the MAC check. Pure
//! random strings are mixed in. Every input goes to every decoder
//! (`common::exercise`), which must not panic and must re-encode whatever it
//! accepts to the same bytes.
//!
//! `WIRE_FUZZ_INPUTS=N` changes the number of inputs of the default test; the
//! ignored `a_million_inputs` test runs 1,000,000 (see `fuzz/README.md`).

mod common;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::exercise::{all_decoders, cluster_key, re_signed};
use common::strategies::*;
use wire::block::{self, BlockServiceStats};
use wire::cdc::CdcKind;
use wire::datagram::{self, Body, HEADER_BYTES};
use wire::ids::BlockId;
use wire::mac::{MacKey, SecretKey};
use wire::policy::Policy;
use wire::shard::ShardKind;
use wire::shuckle::{Registration, RegistrationDatagram, ShuckleKind};
use wire::span::Parity;
use zerocopy::IntoBytes;

/// Inputs of the default (always run) test.
const DEFAULT_INPUTS: usize = 400_000;
/// Samples of each kind's strategy in the corpus.
const SAMPLES_PER_KIND: usize = 6;

fn encode_datagram<'a, B: Body<'a>>(body: &B, key: &MacKey) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let len = datagram::encode(&mut buf, 0x0102_0304_0506_0708, body, Some(key)).expect("corpus encodes");
    buf.truncate(len);
    buf
}

fn samples<S: Strategy>(strategy: S, runner: &mut TestRunner) -> Vec<S::Value> {
    (0..SAMPLES_PER_KIND).map(|_| strategy.new_tree(runner).expect("strategy").current()).collect()
}

/// Valid encodings of everything `wire` decodes.
fn corpus(key: &MacKey) -> Vec<Vec<u8>> {
    let mut runner = TestRunner::deterministic();
    let mut corpus = Vec::new();
    for &kind in ShardKind::ALL {
        corpus.extend(samples(shard_request(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
        corpus.extend(samples(shard_response(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
    }
    for &kind in CdcKind::ALL {
        corpus.extend(samples(cdc_request(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
        corpus.extend(samples(cdc_response(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
    }
    for &kind in ShuckleKind::ALL {
        corpus.extend(samples(shuckle_request(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
        corpus.extend(samples(shuckle_response(kind), &mut runner).iter().map(|m| encode_datagram(m, key)));
    }
    for error in samples(error_resp(), &mut runner) {
        corpus.push(encode_datagram(&wire::shard::ShardResponse::Error(error), key));
        corpus.push(encode_datagram(&wire::cdc::CdcResponse::Error(error), key));
    }
    let block_key = MacKey::new(&SecretKey([7; 16]));
    let id = BlockId::new(0x0123_4567_89ab_cdef);
    corpus.push(block::WriteReq::new(&block_key, id, 1, 2).as_bytes().to_vec());
    corpus.push(block::WriteResp::new(&block_key, id).as_bytes().to_vec());
    corpus.push(block::FetchReq::new(id).as_bytes().to_vec());
    corpus.push(block::FetchRespHead::new(3).as_bytes().to_vec());
    corpus.push(block::CrcReq::new(id).as_bytes().to_vec());
    corpus.push(block::CrcResp::new(3, 4).as_bytes().to_vec());
    corpus.push(block::EraseReq::new(&block_key, id).as_bytes().to_vec());
    corpus.push(block::EraseResp::new(&block_key, id).as_bytes().to_vec());
    corpus.push(block::StatsReq::new([1; 8]).as_bytes().to_vec());
    corpus.push(block::StatsResp::new(&block_key, [1; 8], BlockServiceStats::default()).as_bytes().to_vec());
    for host in [None, Some(wire::codec::Blob::new(b"host-1").expect("short"))] {
        let registration = RegistrationDatagram {
            registration: Registration { secret_key: [9; 16], port: 4000.into(), storage_class: 2 },
            host,
        };
        let mut buf = [0u8; 128];
        let len = registration.encode(&mut buf).expect("fits");
        corpus.push(buf[..len].to_vec());
    }
    let policy = Policy::new(2, Parity::new(4, 2).expect("valid"), 1 << 22).expect("valid");
    corpus.push(policy.encode().to_vec());
    corpus
}

/// Interesting values for corrupted length and count fields.
const INTERESTING_U8: [u8; 9] = [0, 1, 2, 0x0f, 0x10, 0x7f, 0x80, 0xfe, 0xff];
const INTERESTING_U16: [u16; 8] = [0, 1, 0xff, 0x100, 0x3ff, 0x7fff, 0x8000, 0xffff];

fn mutate_once(rng: &mut StdRng, bytes: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = bytes.len();
    match rng.random_range(0..10) {
        0 if len > 0 => {
            for _ in 0..rng.random_range(1..=4) {
                let position = rng.random_range(0..len);
                bytes[position] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => bytes.truncate(rng.random_range(0..=len)),
        2 => {
            let position = rng.random_range(0..=len);
            let count = rng.random_range(1..=16);
            let inserted: Vec<u8> = (0..count).map(|_| rng.random()).collect();
            bytes.splice(position..position, inserted);
        }
        3 if len > 0 => {
            let start = rng.random_range(0..len);
            let end = rng.random_range(start..=len.min(start + 32));
            bytes.drain(start..end);
        }
        4 if len > 0 => {
            let position = rng.random_range(0..len);
            bytes[position] = INTERESTING_U8[rng.random_range(0..INTERESTING_U8.len())];
        }
        5 if len > 1 => {
            let position = rng.random_range(0..len - 1);
            let value = INTERESTING_U16[rng.random_range(0..INTERESTING_U16.len())].to_le_bytes();
            bytes[position..position + 2].copy_from_slice(&value);
        }
        6 if len > 0 => {
            let position = rng.random_range(0..len);
            bytes[position] = rng.random();
        }
        7 => {
            let other = &corpus[rng.random_range(0..corpus.len())];
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            bytes.truncate(cut);
            bytes.extend_from_slice(&other[from..]);
        }
        8 if len > HEADER_BYTES => {
            // Another kind's body under this header (or another family's magic).
            if rng.random_bool(0.7) {
                bytes[12] = rng.random();
            } else {
                let magics = [datagram::SHARD_MAGIC, datagram::CDC_MAGIC, datagram::SHUCKLE_MAGIC];
                bytes[..3].copy_from_slice(&magics[rng.random_range(0..3)]);
            }
        }
        _ => {
            let position = rng.random_range(0..=len);
            let value = rng.random::<u8>();
            bytes.insert(position, value);
        }
    }
}

/// One fuzz input: mostly a mutated corpus entry, sometimes random bytes.
fn next_input(rng: &mut StdRng, corpus: &[Vec<u8>], key: &MacKey) -> Vec<u8> {
    if rng.random_range(0..10) == 0 {
        let len = rng.random_range(0..64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half of them with a valid header, so bodies see random bytes.
        if len >= 4 && rng.random_bool(0.5) {
            bytes[..3].copy_from_slice(&datagram::SHARD_MAGIC);
            bytes[3] = datagram::PROTOCOL_VERSION;
        }
        return bytes;
    }
    let mut bytes = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..=3) {
        mutate_once(rng, &mut bytes, corpus);
    }
    if rng.random_bool(0.5)
        && let Some(signed) = re_signed(&bytes, key)
    {
        return signed;
    }
    bytes
}

/// Runs `inputs` inputs; returns how many decodes accepted one.
fn run(inputs: usize, seed: u64) -> usize {
    let key = cluster_key();
    let corpus = corpus(&key);
    // The corpus itself decodes (a sanity check of the harness).
    for entry in &corpus {
        assert!(all_decoders(entry, &key) > 0, "corpus entry {entry:02x?} is not accepted by any decoder");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for _ in 0..inputs {
        let bytes = next_input(&mut rng, &corpus, &key);
        accepted += all_decoders(&bytes, &key);
    }
    accepted
}

fn inputs_from_env(default: usize) -> usize {
    std::env::var("WIRE_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let inputs = inputs_from_env(DEFAULT_INPUTS);
    let accepted = run(inputs, 0x5eed);
    println!("{inputs} inputs, {accepted} accepted decodes");
    // Mutations keep many inputs valid, so decoders are fuzzed past their
    // first check; a harness that stopped producing valid inputs fails here.
    assert!(accepted > inputs / 20, "only {accepted} of {inputs} inputs decoded");
}

#[test]
#[ignore = "long: run with `cargo test -p wire --test fuzz -- --ignored`"]
fn a_million_inputs() {
    let inputs = inputs_from_env(1_000_000);
    let started = std::time::Instant::now();
    let accepted = run(inputs, 0xf022_0001);
    println!("{inputs} inputs, {accepted} accepted decodes, {:.1} s", started.elapsed().as_secs_f64());
    assert!(accepted > inputs / 20);
}

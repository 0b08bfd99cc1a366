//! The block services this shard knows (from shuckle), and block placement:
//! which D+P services a new span's blocks go to.

use rand::Rng;
use std::collections::HashMap;
use wire::codec::Reader;
use wire::ids::BlockServiceId;
use wire::mac::{KEY_BYTES, MacKey, SecretKey};
use wire::shuckle::flags;
use wire::{Address, ErrorKind};

use crate::store::StoreError;

/// One block service as the shard keeps it.
#[derive(Clone)]
pub struct BlockServiceRecord {
    pub id: BlockServiceId,
    pub address: Address,
    pub storage_class: u8,
    /// [`wire::shuckle::flags`].
    pub flags: u8,
    pub write_weight: u64,
    pub key: SecretKey,
    /// Failure domain.
    pub host: Vec<u8>,
}

impl std::fmt::Debug for BlockServiceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServiceRecord")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("storage_class", &self.storage_class)
            .field("flags", &self.flags)
            .field("write_weight", &self.write_weight)
            .finish_non_exhaustive()
    }
}

impl BlockServiceRecord {
    /// `address [18] | storage_class u8 | flags u8 | weight u64 | key [16] |
    /// host_len u8 | host` (the id is the key of the record).
    pub fn encode(&self) -> Vec<u8> {
        let host = &self.host[..self.host.len().min(wire::limits::HOST_NAME_BYTES_MAX)];
        let mut out = Vec::with_capacity(45 + host.len());
        out.extend_from_slice(zerocopy::IntoBytes::as_bytes(&self.address));
        out.push(self.storage_class);
        out.push(self.flags);
        out.extend_from_slice(&self.write_weight.to_le_bytes());
        out.extend_from_slice(&self.key.0);
        out.push(host.len() as u8);
        out.extend_from_slice(host);
        out
    }

    pub fn decode(id: BlockServiceId, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |_| StoreError::Corrupt("block service record");
        let mut reader = Reader::new(bytes);
        let address: Address = reader.fixed().map_err(corrupt)?;
        let storage_class = reader.u8().map_err(corrupt)?;
        let flags = reader.u8().map_err(corrupt)?;
        let write_weight = reader.u64().map_err(corrupt)?;
        let mut key = [0u8; KEY_BYTES];
        key.copy_from_slice(reader.take(KEY_BYTES).map_err(corrupt)?);
        let host_len = reader.u8().map_err(corrupt)? as usize;
        let host = reader.take(host_len).map_err(corrupt)?.to_vec();
        Ok(Self { id, address, storage_class, flags, write_weight, key: SecretKey(key), host })
    }
}

/// The known block services, with their MAC keys ready.
#[derive(Default)]
pub struct BlockServiceTable {
    services: Vec<BlockServiceRecord>,
    mac_keys: Vec<MacKey>,
    by_id: HashMap<BlockServiceId, usize>,
}

impl BlockServiceTable {
    pub fn new(services: Vec<BlockServiceRecord>) -> Self {
        let mac_keys = services.iter().map(|s| MacKey::new(&s.key)).collect();
        let by_id = services.iter().enumerate().map(|(index, s)| (s.id, index)).collect();
        Self { services, mac_keys, by_id }
    }

    pub fn services(&self) -> &[BlockServiceRecord] {
        &self.services
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service and its MAC key.
    pub fn get(&self, id: BlockServiceId) -> Option<(&BlockServiceRecord, &MacKey)> {
        let index = *self.by_id.get(&id)?;
        Some((self.services.get(index)?, self.mac_keys.get(index)?))
    }
}

/// Flags that exclude a service from new writes.
const NOT_WRITABLE: u8 = flags::STALE | flags::DRAIN | flags::TERMINAL | flags::UNKNOWN;

impl BlockServiceRecord {
    /// Placement may choose it (flags and weight; the storage class aside).
    pub fn writable(&self) -> bool {
        self.flags & NOT_WRITABLE == 0 && self.write_weight > 0
    }
}

/// Why no placement was possible.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{available} writable block services of storage class {storage_class}, {needed} needed")]
pub struct NotEnoughBlockServices {
    pub storage_class: u8,
    pub needed: usize,
    pub available: usize,
}

impl NotEnoughBlockServices {
    pub const ERROR_KIND: ErrorKind = ErrorKind::NotEnoughBlockServices;
}

/// Picks `count` DISTINCT writable services of `storage_class`, none of
/// them in `excluded` (services a client just failed to write to), each draw
/// weighted by write weight. Hosts are spread: a draw only considers the
/// services whose host holds the fewest of the blocks chosen so far, so with
/// at least `count` hosts every block lands on a different host.
pub fn place(
    services: &[BlockServiceRecord],
    storage_class: u8,
    count: usize,
    excluded: &[BlockServiceId],
    rng: &mut impl Rng,
) -> Result<Vec<usize>, NotEnoughBlockServices> {
    let candidates: Vec<usize> = services
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.storage_class == storage_class
                && s.flags & NOT_WRITABLE == 0
                && s.write_weight > 0
                && !excluded.contains(&s.id)
        })
        .map(|(index, _)| index)
        .collect();
    if candidates.len() < count {
        return Err(NotEnoughBlockServices { storage_class, needed: count, available: candidates.len() });
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    let mut host_use: HashMap<&[u8], usize> = HashMap::new();
    while chosen.len() < count {
        let open = |index: &usize| !chosen.contains(index);
        let least_used = candidates
            .iter()
            .filter(|i| open(i))
            .filter_map(|&i| services.get(i))
            .map(|s| host_use.get(s.host.as_slice()).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let pool: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|i| open(i))
            .filter(|&i| {
                services.get(i).is_some_and(|s| host_use.get(s.host.as_slice()).copied().unwrap_or(0) == least_used)
            })
            .collect();
        let total: u128 = pool.iter().filter_map(|&i| services.get(i)).map(|s| u128::from(s.write_weight)).sum();
        if total == 0 {
            return Err(NotEnoughBlockServices { storage_class, needed: count, available: chosen.len() });
        }
        let mut ticket = rng.random_range(0..total);
        let mut pick = pool[pool.len() - 1];
        for &index in &pool {
            let weight = services.get(index).map_or(0, |s| u128::from(s.write_weight));
            if ticket < weight {
                pick = index;
                break;
            }
            ticket -= weight;
        }
        if let Some(service) = services.get(pick) {
            *host_use.entry(service.host.as_slice()).or_insert(0) += 1;
        }
        chosen.push(pick);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn service(id: u64, class: u8, host: &str, weight: u64, flags: u8) -> BlockServiceRecord {
        BlockServiceRecord {
            id: BlockServiceId::new(id),
            address: Address::UNKNOWN,
            storage_class: class,
            flags,
            write_weight: weight,
            key: SecretKey([id as u8; 16]),
            host: host.as_bytes().to_vec(),
        }
    }

    #[test]
    fn picks_distinct_services_of_the_class_and_skips_unwritable_ones() {
        let services = vec![
            service(1, 2, "a", 1, 0),
            service(2, 2, "a", 1, 0),
            service(3, 3, "b", 1, 0),
            service(4, 2, "c", 1, flags::STALE),
            service(5, 2, "d", 1, flags::DRAIN),
            service(6, 2, "e", 1, flags::TERMINAL),
            service(7, 2, "f", 0, 0),
            service(8, 2, "g", 5, 0),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let mut chosen = place(&services, 2, 3, &[], &mut rng).unwrap();
            chosen.sort();
            assert_eq!(chosen, vec![0, 1, 7]);
        }
        let error = place(&services, 2, 4, &[], &mut rng).unwrap_err();
        assert_eq!(error, NotEnoughBlockServices { storage_class: 2, needed: 4, available: 3 });
        assert!(place(&services, 9, 1, &[], &mut rng).is_err());
    }

    #[test]
    fn never_picks_an_excluded_service() {
        let services: Vec<_> = (1..=7).map(|i| service(i, 2, &format!("h{i}"), 1, 0)).collect();
        let excluded = [BlockServiceId::new(3), BlockServiceId::new(6), BlockServiceId::new(99)];
        let mut rng = StdRng::seed_from_u64(4);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let chosen = place(&services, 2, 5, &excluded, &mut rng).unwrap();
            assert_eq!(chosen.len(), 5);
            for index in chosen {
                assert!(!excluded.contains(&services[index].id), "picked excluded {:?}", services[index].id);
                seen.insert(index);
            }
        }
        // The five remaining services are all used; the excluded ones never.
        assert_eq!(seen.len(), 5);
        // Excluding one more leaves 4 for 5 blocks: not enough.
        let more = [BlockServiceId::new(3), BlockServiceId::new(6), BlockServiceId::new(1)];
        let error = place(&services, 2, 5, &more, &mut rng).unwrap_err();
        assert_eq!(error, NotEnoughBlockServices { storage_class: 2, needed: 5, available: 4 });
        // Without exclusions all seven are eligible.
        assert!(place(&services, 2, 7, &[], &mut rng).is_ok());
    }

    #[test]
    fn spreads_over_hosts_when_there_are_enough() {
        // Host "big" has many heavy services; with 3 hosts and 3 blocks each
        // block must still go to a different host.
        let mut services: Vec<_> = (0..10).map(|i| service(i, 2, "big", 100, 0)).collect();
        services.push(service(100, 2, "small1", 1, 0));
        services.push(service(101, 2, "small2", 1, 0));
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..200 {
            let chosen = place(&services, 2, 3, &[], &mut rng).unwrap();
            let mut hosts: Vec<&[u8]> = chosen.iter().map(|&i| services[i].host.as_slice()).collect();
            hosts.sort();
            hosts.dedup();
            assert_eq!(hosts.len(), 3);
        }
        // With 5 blocks over 3 hosts, no host gets more than 2.
        for _ in 0..200 {
            let chosen = place(&services, 2, 5, &[], &mut rng).unwrap();
            let on_big = chosen.iter().filter(|&&i| services[i].host == b"big").count();
            assert!(on_big <= 3, "{on_big}");
            let mut unique = chosen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 5);
        }
    }

    #[test]
    fn weights_are_respected_statistically() {
        let services = vec![service(1, 2, "a", 1, 0), service(2, 2, "b", 3, 0)];
        let mut rng = StdRng::seed_from_u64(3);
        let mut heavy = 0;
        let draws = 20_000;
        for _ in 0..draws {
            if place(&services, 2, 1, &[], &mut rng).unwrap() == vec![1] {
                heavy += 1;
            }
        }
        // Expected 3/4; the seeded draw is deterministic, the bound generous.
        let fraction = heavy as f64 / draws as f64;
        assert!((0.72..0.78).contains(&fraction), "{fraction}");
    }
}

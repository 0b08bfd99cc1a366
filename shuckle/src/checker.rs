//! Checking block services: a TCP stats request with a fresh random token,
//! whose answer must carry the token and the MAC of the service's key. Only
//! a verified answer updates a record; a bad MAC, a wrong token, a timeout
//! or a connection error changes nothing (the record just ages towards
//! stale).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wire::block::{BlockServiceStats, StatsReq, StatsResp};
use wire::mac::MacKey;
use wire::{BlockServiceId, EggsTime};
use zerocopy::{FromBytes, IntoBytes};

use crate::registry::CheckTarget;
use crate::service::Shuckle;

/// Most checks in flight at once: bounds sockets and tasks when many
/// services are unreachable or registrations flood in.
pub const CHECKS_IN_FLIGHT_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("answer does not verify (wrong token, tag or MAC)")]
    BadAnswer,
}

/// One stats exchange with `target`, verified with its key.
pub async fn check(target: &CheckTarget, timeout: Duration) -> Result<BlockServiceStats, CheckError> {
    let token: [u8; 8] = rand::random();
    let exchange = async {
        let mut stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(StatsReq::new(token).as_bytes()).await?;
        let mut answer = [0u8; size_of::<StatsResp>()];
        stream.read_exact(&mut answer).await?;
        Ok::<_, CheckError>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange).await.map_err(|_| CheckError::Timeout(timeout))??;
    let response = StatsResp::read_from_bytes(&answer).map_err(|_| CheckError::BadAnswer)?;
    response.verify(&MacKey::new(&target.secret_key), token).ok_or(CheckError::BadAnswer)
}

/// Runs checks in the background, at most one per (service, address) at
/// a time and at most [`CHECKS_IN_FLIGHT_MAX`] in all.
pub struct Checker {
    shuckle: Arc<Shuckle>,
    timeout: Duration,
    in_flight: Mutex<HashSet<(BlockServiceId, SocketAddr)>>,
    permits: Arc<Semaphore>,
}

impl Checker {
    pub fn new(shuckle: Arc<Shuckle>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            shuckle,
            timeout,
            in_flight: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(CHECKS_IN_FLIGHT_MAX)),
        })
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<(BlockServiceId, SocketAddr)>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts checking `target` unless the same check is running or too
    /// many are (a registration is repeated every minute anyway).
    pub fn spawn(self: &Arc<Self>, target: CheckTarget) {
        let slot = (target.id(), target.addr);
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(id = %slot.0, addr = %slot.1, "too many checks in flight; skipping one");
            return;
        };
        if !self.in_flight().insert(slot) {
            return;
        }
        let checker = Arc::clone(self);
        tokio::spawn(async move {
            match check(&target, checker.timeout).await {
                Ok(stats) => {
                    // The store fsyncs: off the async workers.
                    let shuckle = Arc::clone(&checker.shuckle);
                    let target = target.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || shuckle.apply_good_check(&target, stats, EggsTime::now()));
                    match stored.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => tracing::error!(%error, id = %slot.0, "cannot record a good check"),
                        Err(error) => tracing::error!(%error, id = %slot.0, "recording a good check failed"),
                    }
                }
                Err(error) if target.from_registration => {
                    tracing::warn!(id = %slot.0, addr = %slot.1, %error, "registration not verified; ignored");
                }
                Err(error) => tracing::debug!(id = %slot.0, addr = %slot.1, %error, "check failed"),
            }
            checker.in_flight().remove(&slot);
            drop(permit);
        });
    }

    /// Checks every known service in turn, each about once per `period`.
    pub async fn round_robin(self: Arc<Self>, period: Duration) {
        let mut cursor = BlockServiceId::new(0);
        loop {
            let (target, count) = {
                let registry = self.shuckle.registry();
                (registry.next_to_check(cursor), registry.block_service_count())
            };
            if let Some(target) = target {
                cursor = target.id();
                self.spawn(target);
            }
            let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
            tokio::time::sleep(period / count).await;
        }
    }
}

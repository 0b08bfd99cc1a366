//! Which transactions may run at the same time.
//!
//! Every transaction names, from its arguments alone, the locks it needs
//! ([`lock_set`]) and asks for all of them at once when it arrives
//! ([`LockTable::enqueue`]). It is granted all of them together, or none,
//! and holds them until it is done:
//!
//! | transaction | locks |
//! |---|---|
//! | mkdir P/n | tree shared, entry (P, n) exclusive |
//! | mv file SP/sn → TP/tn | tree shared, entries (SP, sn) and (TP, tn) exclusive |
//! | purge remote file P/n | tree shared, entry (P, n) exclusive |
//! | rmdir P/n, mv dir | tree exclusive |
//!
//! The tree lock protects the shape of the directory tree: which
//! directories are linked and who is whose ancestor. Only rmdir and mv dir
//! change it, so they run alone; everything else only needs its parents to
//! stay linked (which the shared tree lock guarantees) and its own entries
//! untouched by other transactions (the entry locks). The loop check of a
//! directory move walks a tree nobody else changes meanwhile.
//!
//! Grants are in arrival order: a transaction is granted when each of its
//! locks is free of conflicting holders *and* of conflicting requests by
//! transactions that arrived earlier and still wait. So nobody overtakes a
//! conflicting earlier request (no starvation: an mv dir waits for the
//! running mkdirs, while later mkdirs wait for it).
//!
//! Deadlock freedom: a transaction holds no lock while it waits (all are
//! granted at once), so there is no hold-and-wait; a waiting transaction
//! waits only for running ones (which need no further lock to finish) and
//! for earlier arrivals, and "earlier" has no cycles.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::txn::TxnArgs;

#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum LockKey {
    Tree,
    Entry(u64, String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// The locks `args` needs.
pub fn lock_set(args: &TxnArgs) -> Vec<(LockKey, Mode)> {
    let entry = |dir: u64, name: &str| (LockKey::Entry(dir, name.to_owned()), Mode::Exclusive);
    let mut locks = match args {
        TxnArgs::MkDir { parent, name } | TxnArgs::PurgeRemoteFile { parent, name, .. } => {
            vec![(LockKey::Tree, Mode::Shared), entry(*parent, name)]
        }
        TxnArgs::Move { directory: false, source_parent, target_parent, source_name, target_name } => {
            vec![(LockKey::Tree, Mode::Shared), entry(*source_parent, source_name), entry(*target_parent, target_name)]
        }
        TxnArgs::RmDir { .. } | TxnArgs::Move { directory: true, .. } => vec![(LockKey::Tree, Mode::Exclusive)],
    };
    locks.sort_by(|a, b| a.0.cmp(&b.0));
    locks.dedup_by(|a, b| a.0 == b.0);
    locks
}

#[derive(Default, Debug)]
struct Held {
    shared: u32,
    exclusive: bool,
}

struct Waiter {
    ticket: u64,
    wants: Vec<(LockKey, Mode)>,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    held: HashMap<LockKey, Held>,
    waiting: VecDeque<Waiter>,
    next_ticket: u64,
}

fn conflicts(a: Mode, b: Mode) -> bool {
    a == Mode::Exclusive || b == Mode::Exclusive
}

impl Inner {
    fn free_for(&self, key: &LockKey, mode: Mode) -> bool {
        match self.held.get(key) {
            None => true,
            Some(held) => !held.exclusive && (held.shared == 0 || mode == Mode::Shared),
        }
    }

    fn take(&mut self, wants: &[(LockKey, Mode)]) {
        for (key, mode) in wants {
            let held = self.held.entry(key.clone()).or_default();
            match mode {
                Mode::Shared => held.shared += 1,
                Mode::Exclusive => held.exclusive = true,
            }
        }
    }

    fn give_back(&mut self, wants: &[(LockKey, Mode)]) {
        for (key, mode) in wants {
            if let Some(held) = self.held.get_mut(key) {
                match mode {
                    Mode::Shared => held.shared = held.shared.saturating_sub(1),
                    Mode::Exclusive => held.exclusive = false,
                }
                if held.shared == 0 && !held.exclusive {
                    self.held.remove(key);
                }
            }
        }
    }

    /// Grants every waiter that can run, in arrival order.
    fn grant(&mut self) {
        let mut blocked: HashMap<LockKey, Mode> = HashMap::new();
        let mut index = 0;
        while index < self.waiting.len() {
            let Some(waiter) = self.waiting.get(index) else { break };
            let grantable = waiter.wants.iter().all(|(key, mode)| {
                self.free_for(key, *mode) && blocked.get(key).is_none_or(|earlier| !conflicts(*earlier, *mode))
            });
            if grantable {
                if let Some(waiter) = self.waiting.remove(index) {
                    self.take(&waiter.wants);
                    if waiter.grant.send(()).is_err() {
                        // The transaction was abandoned before its grant.
                        self.give_back(&waiter.wants);
                    }
                }
                continue;
            }
            for (key, mode) in &waiter.wants {
                let earlier = blocked.entry(key.clone()).or_insert(*mode);
                if *mode == Mode::Exclusive {
                    *earlier = Mode::Exclusive;
                }
            }
            index += 1;
        }
    }
}

/// The lock table of one coordinator.
#[derive(Default)]
pub struct LockTable {
    inner: Mutex<Inner>,
}

/// A place in the queue; [`Ticket::granted`] waits for the locks.
pub struct Ticket {
    table: Arc<LockTable>,
    ticket: u64,
    wants: Vec<(LockKey, Mode)>,
    granted: Option<oneshot::Receiver<()>>,
}

/// Held locks, given back when dropped.
pub struct Guard {
    table: Arc<LockTable>,
    wants: Vec<(LockKey, Mode)>,
}

impl LockTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request for `wants` (synchronously: arrival order is the
    /// order of these calls).
    pub fn enqueue(self: &Arc<Self>, wants: Vec<(LockKey, Mode)>) -> Ticket {
        let (grant, granted) = oneshot::channel();
        let mut inner = self.lock();
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.waiting.push_back(Waiter { ticket, wants: wants.clone(), grant });
        inner.grant();
        Ticket { table: self.clone(), ticket, wants, granted: Some(granted) }
    }

    /// Transactions waiting for locks.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Locks currently held (keys).
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

impl Ticket {
    /// Waits until every lock is granted.
    pub async fn granted(mut self) -> Guard {
        // Awaited in place: if this future is dropped mid-wait, Drop below
        // still sees the receiver and gives back a grant that came.
        if let Some(granted) = self.granted.as_mut() {
            let _ = granted.await;
        }
        self.granted = None;
        Guard { table: self.table.clone(), wants: std::mem::take(&mut self.wants) }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.granted.is_none() {
            return;
        }
        // Abandoned while waiting (or granted but never collected).
        let mut inner = self.table.lock();
        if let Some(index) = inner.waiting.iter().position(|w| w.ticket == self.ticket) {
            inner.waiting.remove(index);
        } else if let Some(mut granted) = self.granted.take()
            && granted.try_recv().is_ok()
        {
            inner.give_back(&self.wants);
        }
        inner.grant();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.give_back(&self.wants);
        inner.grant();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mkdir(parent: u64, name: &str) -> TxnArgs {
        TxnArgs::MkDir { parent, name: name.into() }
    }

    fn mv_dir() -> TxnArgs {
        TxnArgs::Move {
            directory: true,
            source_parent: 1,
            target_parent: 2,
            source_name: "a".into(),
            target_name: "b".into(),
        }
    }

    async fn is_granted(ticket: Ticket) -> Result<Guard, ()> {
        tokio::time::timeout(Duration::from_millis(10), ticket.granted()).await.map_err(|_| ())
    }

    #[tokio::test]
    async fn disjoint_entries_run_at_once_and_the_same_entry_waits() {
        let table = Arc::new(LockTable::default());
        let a = table.enqueue(lock_set(&mkdir(1, "a")));
        let b = table.enqueue(lock_set(&mkdir(1, "b")));
        let a_again = table.enqueue(lock_set(&mkdir(1, "a")));
        let guard_a = is_granted(a).await.unwrap();
        let _guard_b = is_granted(b).await.unwrap();
        let a_again = tokio::spawn(a_again.granted());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!a_again.is_finished(), "the same entry waits");
        drop(guard_a);
        tokio::time::timeout(Duration::from_secs(1), a_again).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_tree_move_waits_for_running_mkdirs_and_later_mkdirs_wait_for_it() {
        let table = Arc::new(LockTable::default());
        let first = is_granted(table.enqueue(lock_set(&mkdir(1, "a")))).await.unwrap();
        let mv = tokio::spawn(table.enqueue(lock_set(&mv_dir())).granted());
        let later = tokio::spawn(table.enqueue(lock_set(&mkdir(1, "z"))).granted());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!mv.is_finished() && !later.is_finished(), "no overtaking of the waiting move");
        drop(first);
        let mv_guard = tokio::time::timeout(Duration::from_secs(1), mv).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!later.is_finished());
        drop(mv_guard);
        tokio::time::timeout(Duration::from_secs(1), later).await.unwrap().unwrap();
        assert_eq!(table.waiting(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_request_gives_back_its_place() {
        let table = Arc::new(LockTable::default());
        let first = is_granted(table.enqueue(lock_set(&mkdir(1, "a")))).await.unwrap();
        let abandoned = table.enqueue(lock_set(&mkdir(1, "a")));
        drop(abandoned);
        drop(first);
        assert_eq!(table.waiting(), 0);
        assert_eq!(table.held(), 0);
        is_granted(table.enqueue(lock_set(&mkdir(1, "a")))).await.unwrap();
    }
}

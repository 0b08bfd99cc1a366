//! gcd's counters, in a `prometheus_client` registry. [`Metrics::register`]
//! adds them to a registry, which `main.rs` hands to the daemons' shared
//! `/metrics` endpoint (`daemon::metrics::serve`, `--metrics ADDR`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Everything gcd counts since it started.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Eden files removed from their shard after all their blocks were erased.
    pub files_collected: Counter,
    /// Blocks erased on a block service with a proof the shard accepted.
    pub blocks_erased: Counter,
    /// Span bytes whose blocks were erased (logical bytes: parity not counted).
    pub bytes_freed: Counter,
    /// Dead entries purged (local and through the CDC).
    pub dirents_purged: Counter,
    /// Removed directories whose records were purged (after their dead entries).
    pub directories_collected: Counter,
    /// Blocks whose CRC was checked on their block service.
    pub blocks_scrubbed: Counter,
    /// Bytes of the blocks checked.
    pub bytes_scrubbed: Counter,
    /// Blocks found with a wrong CRC or missing.
    pub corruptions_found: Counter,
    /// Bad or missing blocks rebuilt and swapped in.
    pub corruptions_repaired: Counter,
    /// Blocks moved off an evacuated block service.
    pub blocks_migrated: Counter,
    /// Bytes of the blocks moved.
    pub bytes_migrated: Counter,
    /// Erases a block service refused or could not be asked (the block stays listed).
    pub erase_failures: Counter,
    /// Every failed step (requests, refusals, rebuilds); each is retried next cycle.
    pub errors: Counter,
    /// Completed cycles.
    pub cycles: Counter,
}

impl Metrics {
    /// Adds every counter to `registry` (names get `_total` from the encoder).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("gcd");
        let counters: [(&str, &str, &Counter); 14] = [
            ("files_collected", "eden files removed after their blocks were erased", &self.files_collected),
            ("blocks_erased", "blocks erased with an accepted proof", &self.blocks_erased),
            ("bytes_freed", "span bytes whose blocks were erased", &self.bytes_freed),
            ("dirents_purged", "dead entries purged", &self.dirents_purged),
            ("directories_collected", "removed directories purged", &self.directories_collected),
            ("blocks_scrubbed", "blocks whose CRC was checked", &self.blocks_scrubbed),
            ("bytes_scrubbed", "bytes of the blocks checked", &self.bytes_scrubbed),
            ("corruptions_found", "blocks found corrupt or missing", &self.corruptions_found),
            ("corruptions_repaired", "corrupt or missing blocks rebuilt and swapped in", &self.corruptions_repaired),
            ("blocks_migrated", "blocks moved off evacuated block services", &self.blocks_migrated),
            ("bytes_migrated", "bytes of the blocks moved", &self.bytes_migrated),
            ("erase_failures", "erases refused or not possible (block stays listed)", &self.erase_failures),
            ("errors", "failed steps, retried next cycle", &self.errors),
            ("cycles", "completed collection cycles", &self.cycles),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }

    /// A registry holding just gcd's counters.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.register(&mut registry);
        registry
    }
}

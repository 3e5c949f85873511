//! The MySQL (and MariaDB) implementations of the ports: events and
//! counters on the shards, the catalog database, the stats reads.

pub mod catalog;
pub mod counters;
pub mod erasure;
pub mod export;
pub mod ledger;
pub mod retention;
pub mod shards;
pub mod stats;
pub mod tail;

pub use catalog::MySqlCatalog;
pub use shards::Shards;

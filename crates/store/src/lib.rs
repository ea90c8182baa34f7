//! lockgate-store: persistence on [sled] 0.34. Definitions (vhosts, users, permissions,
//! policies, exchanges, queues, bindings), persistent messages and spilled message bodies.
//! It knows keys and bytes, not routing: keys and values of definitions and the header
//! bytes of messages are the broker's own encoding; the store hands out [`QueueId`]s and
//! [`MessageId`]s and keeps the records. sled's types stay inside this crate (its on-disk
//! format changes between versions; see [`FORMAT_VERSION`]).
//!
//! | file | concept |
//! |---|---|
//! | `store.rs` | [`Store`]: write calls, reads, spill, close |
//! | `recovery.rs` | opening: format and integrity checks, [`Recovery`], the crash sweep |
//! | `version.rs` | [`VERSION_FILE`]: format version and last flushed commit, outside sled |
//! | `writer.rs` | the group-commit writer thread and [`Commit`] |
//! | `in_flight.rs` | the age of the oldest spill call running, without a clock read per call |
//! | `keys.rs` | key layout and record encoding |
//! | `ids.rs` | [`QueueId`], [`MessageId`], [`StoredRef`], [`DefinitionKind`] |
//! | `metrics.rs` | [`StoreMetrics`]: batch sizes and commit latency |
//! | `error.rs` | [`StoreError`]: every error names the path and keeps its cause |
//! | `failpoints.rs` | fault injection (feature `failpoints`) |
//!
//! # On disk
//!
//! A directory holding sled's files (`conf`, `db`, `blobs/`, `snap.*`) and
//! [`VERSION_FILE`] (`lockgate-store format 3` / `committed N`, see Integrity). Three sled
//! trees; integers are big-endian so byte order is numeric order:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `format` | u32 format version |
//! | `meta` | `clean` | 1 after a clean close, 0 while open |
//! | `meta` | `legacy-below` | u64: lower message ids may be format 1/2 `M` records (upgraded stores only) |
//! | `data` | `D` kind-tag broker-key | broker value (queues, tag `q`: u64 queue id + broker value) |
//! | `data` | `I` | u64 next queue id |
//! | `data` | `S` | u64 number of the latest committed batch |
//! | `data` | `N` | u64 one past the highest message id written (ids are never reused) |
//! | `data` | `Q` queue-id seq | the queue index: u64 message id, then, for a message held by this queue only, its record's first 4 KiB - 8 (format 3) |
//! | `data` | `M` message-id | the record of a message held by several queues: its first 4 KiB |
//! | `data` | `P` message-id u32-part | the record's next 4 KiB, for part 1, 2, ... (format 2) |
//! | `data` | `R` message-id | u32 reference count of an `M` record (queues still holding it) |
//! | `data` | `C` queue-id | u64 number of the queue's index entries (read at startup) |
//! | `data` | `W` queue-id | u64 highest delivered seq (redelivered watermark) |
//! | `spill` | queue-id seq | u32 header length, header bytes, body (transient only): its first 4 KiB |
//! | `spill` | queue-id seq u32-part | the record's next 4 KiB, for part 1, 2, ... |
//!
//! A record is `u32 header length, header bytes, body`. Definitions and messages share the
//! `data` tree so that every write is one atomic sled batch (a message record lands with its
//! index entries, count and reference count, or not at all), and sled recovers its log as a
//! prefix, in order.
//!
//! Format 3 stores a message held by one queue in its index entry: one sled insert when it
//! is published and one remove when it is acked (format 2 wrote an `M` record and an index
//! entry pointing to it, and removed both). An index value of exactly 8 bytes points to an
//! `M` record, a longer one holds the record. Format 1 and 2 stores are upgraded in place
//! when opened: their records stay as they are until acked, and `legacy-below` tells the
//! writer which ids may still have a single-queue `M` record to remove with their entry.
//!
//! # Durability: group commit
//!
//! Every write to `data` goes through one writer thread (see `writer.rs`): it takes all
//! writes queued while it was busy, applies them (sled batches of up to 64 whole writes:
//! sled's memory use explodes with one huge batch), calls `flush` (fsync) once and
//! completes their [`Commit`]s together. A publisher confirm is sent after its commit
//! completes, so a confirmed message survives `kill -9`. Removes (acks) go through the same
//! writer: once a remove's commit completes, the message never comes back. A message copy
//! removed in the same group that published it is written neither way (it was acked before
//! it was ever durable; [`StoreMetrics::acked_unwritten`] counts them).
//!
//! # Integrity
//!
//! Each batch also stores its number under `S`; the writer copies the latest flushed number
//! into [`VERSION_FILE`] about once a second and exactly at close. sled recovers whatever
//! prefix of its log it can read, so a truncated or damaged `db` file would otherwise open
//! as a smaller store: [`Store::open`] refuses (with [`StoreError::Corrupt`] naming the file)
//! a database that ends before the recorded commit, one whose format record is missing, and
//! one of another format ([`StoreError::UnsupportedVersion`]). A crash never trips this:
//! the recorded number was flushed before it was recorded.
//!
//! # Shared messages
//!
//! A message routed to N > 1 durable queues is one `M` record, N `Q` entries pointing to it
//! and an `R` count of N (the writer keeps the counts in memory and is the only writer, so
//! no read-modify-write happens on the hot path). The record is removed with the last entry.
//!
//! # Redelivered after a restart
//!
//! Each queue has a delivered watermark (`W`): [`Store::mark_delivered`] keeps the highest
//! delivered seq, written once per queue with the next batch (no extra fsync of its own). On recovery every
//! message at or below the watermark comes back with redelivered = true; in a FIFO queue
//! that is exactly the messages delivered and not acked (requeued ones included). With
//! priorities or out-of-order delivery some never-delivered messages below the watermark
//! are also flagged: a false "maybe delivered before" is allowed, a false "new" is not.
//! One window remains: a delivery made in the last few milliseconds before a crash, whose
//! watermark was not flushed yet, comes back with redelivered = false.
//!
//! # Spill
//!
//! Transient messages of a long queue are written to `spill` (no fsync) keyed by queue id +
//! seq, and read back in order by [`Store::page_in`], which merges them with the queue's
//! persistent messages (whose bodies are already stored and need no spilling). The whole
//! `spill` tree is cleared at startup: transient messages do not survive a restart.
//! Records are split into 4 KiB parts (sled keeps tree nodes of large values in memory for
//! good), and the spill calls flush the engine every 4 MiB of spill traffic (sled reclaims a
//! segment only after it was flushed).
//!
//! A discard that fails (a purged queue's spilled records) is owed: the next spill call
//! retries it before doing its own work, and the next start clears the tree anyway.
//!
//! Spill calls bypass the writer, so [`Store::oldest_write_wait`] does not see them; a call
//! that never returns (a hung disk) shows in [`Store::oldest_spill_wait`] instead.
//!
//! # Space
//!
//! Removes are real deletes. sled 0.34 is log-structured: a rewritten or deleted record
//! leaves a dead copy in its segment, and a segment whose live data drops low enough is
//! rewritten and then reused, so the files stay proportional to the live data (plus a few
//! segments of slack), not to the history; free segments at the end of the file are
//! truncated away, free ones in the middle are reused. Records are stored in 4 KiB parts
//! because sled writes a tree node over 64 KiB as a blob file that is deleted only with the
//! segment pointing to it, and counts it in its cache at the size of the pointer: large
//! records in one value made both the directory and the memory grow with the history.
//! The `space_is_reclaimed_by_acks` test checks that a long publish + ack run keeps the
//! directory bounded (30 MiB of bodies published and acked: the directory never exceeds
//! ~4-7 MiB).
//!
//! # Blocking
//!
//! Write calls never block (they queue and return a [`Commit`]), except [`Store::publish`]
//! when [`StoreConfig::max_pending_bytes`] of records wait for the writer: then it waits until
//! the writer takes them (backpressure for publishers without confirms). Opening, closing, reads
//! and spill calls touch the disk on the caller's thread: use the `_async` variants (which
//! run on `spawn_blocking`) from async code.
//!
//! [sled]: https://docs.rs/sled/0.34

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
mod ids;
mod in_flight;
mod keys;
mod metrics;
mod recovery;
mod store;
mod version;
mod writer;

pub use error::{Cause, Result, StoreError};
pub use ids::{DefinitionKind, MessageId, QueueId, StoredRef};
pub use metrics::StoreMetrics;
pub use recovery::{Definition, RecoveredQueue, Recovery};
pub use store::{
    IndexEntry, MessageRecord, PagedMessage, QueueIndex, SpillRecord, Store, StoreConfig,
    FORMAT_VERSION,
};
pub use version::VERSION_FILE;
pub use writer::Commit;

//! A persistent hash map with variable-length byte keys and values, built only on the public
//! pmstore API (`Pool`, `Tx`, `PPtr`, `PSlice`). Shared by the `kv` example (`main.rs`) and its
//! tests (`tests/kv.rs`).
//!
//! # Why a hash map (and not a B+tree)
//!
//! The workload of a key-value store is point operations. A hash map does a get or a put in
//! O(1) pool reads and, for an insert, changes 24 bytes of existing objects (a table slot and
//! a length counter) besides writing the new entry. A B+tree would give ordered scans, but
//! every insert rewrites part of a sorted node (logged) and splits propagate up the tree; `kv
//! list` sorts in memory instead.
//!
//! # Layout in the pool
//!
//! * The **root object** ([`Root`], 18.25 KiB, one allocation) holds, each in its own 256-byte
//!   lock stripe:
//!   * [`HEAD_COPIES`] identical copies of the head ([`Head`]): magic, version, the current
//!     table `cur` and, while a resize is in progress, the previous one `old`. Read by every
//!     operation, written (every copy, in one transaction) only when a resize starts or ends.
//!     Each thread reads one copy (assigned round-robin), so that the shared locks of gets on
//!     different threads are on different stripes: with one head, every get of every thread
//!     took a shared lock on the same lock word, and two threads' gets did not scale (the
//!     word's cache line moved between their cores twice per get);
//!   * the migration cursor (slots of `old` already migrated), used only by migration steps;
//!   * 64 **striped length counters**: counter `i` counts the entries whose hash has `i` in its
//!     top 6 bits. Two concurrent inserts conflict on a counter with probability 1/64 instead of
//!     always (as one length word would make them); `len` is the sum.
//! * A **table** is a `PSlice<Slot>` of a power-of-two length, allocated with
//!   `alloc_slice_zeroed`. It is an **open
//!   addressing** table with linear probing; a [`Slot`] holds the key's full 64-bit hash and a
//!   pointer to the entry. Keeping the hash in the slot means a lookup reads only the entry
//!   whose hash matches (one cache miss for a hit, none for a miss in most cases), and
//!   moving a slot to a new table never reads the entry at all. (A first version chained
//!   entries through a `next` field in each entry: migrating a bucket then had to read every
//!   entry of its chain, a cache miss each, which was 85% of the resize cost.)
//! * An **entry** is one allocation: an 8-byte [`Header`] (key length, value length), then the
//!   key bytes, then the value bytes. Entries are never modified: a put of an existing key
//!   allocates a new entry, points the slot at it and frees the old one.
//!
//! So an insert is one allocation, one 16-byte slot write and one 8-byte counter update, in
//! one transaction (one drain); an overwrite is one allocation, one 8-byte slot write and one
//! free. (pmstore logs a new block whole, so the entry's bytes go through the redo log too:
//! a 1 MiB value needs a 1 MiB log extension, i.e. that much free heap during its commit.)
//!
//! Deletes in the current table use backward-shift deletion (no tombstones: later slots of the
//! probe run move back), so lookups never slow down with churn.
//!
//! # Incremental resizing
//!
//! When a length counter exceeds its share of half the table, the insert that sees it
//! allocates a table twice as large (zero-filled: the only O(n) work of a resize, 16 bytes per
//! slot, no entry touched — but pmstore logs a new block whole, so that put writes the zeroes
//! twice and needs as much free heap again for the log extension during its commit) and makes
//! it `cur`, the previous table `old`. From
//! then on every key lives in exactly one of the two tables, and one mutation in 4 (chosen by
//! bits of the key's hash, so a retried transaction makes the same choice), and any insert
//! that finds its counter over the limit of the new table, also migrates the next 16 slots of
//! `old` in the same transaction (4 slots per mutation on average, so the migration ends when
//! the new table is about 3/8 full): each live slot is inserted into `cur` and replaced by a
//! tombstone ([`MOVED`]) that keeps `old`'s probe runs intact. The step that migrates the
//! last slot frees `old`. Lookups during a resize probe `old`, then `cur`; they never need the
//! cursor. No single operation moves more than 16 slots.
//!
//! The map never shrinks (deleting entries frees them; the table stays).
//!
//! # Hash
//!
//! A fixed, seedless 64-bit hash ([`hash`]): 8-byte little-endian words folded FxHash-style
//! (`h = (rotl(h, 5) ^ w) * K`) and finished with MurmurHash3's `fmix64`, so every bit of the
//! result depends on every key bit. It is stable across runs, builds and platforms (the table
//! layout depends on it), but not resistant to deliberately colliding keys (hash flooding).
//!
//! # Limits
//!
//! Keys up to [`MAX_KEY`] (64 KiB), values up to [`MAX_VALUE`] (1 MiB); larger ones are
//! refused before anything is written ([`KvError::KeyTooLarge`], [`KvError::ValueTooLarge`]).
//! A full pool makes the operation fail with [`KvError::is_full`] and change nothing; the map
//! stays usable (gets and deletes work, and puts again after deletes). A resize that does not
//! fit (the new table or its log) is skipped: the put is run again without it, the table gets
//! fuller and the resize is tried again 256 puts later; only a completely full table refuses
//! inserts ([`KvError::TableFull`], also [`KvError::is_full`]).
//!
//! # Concurrency
//!
//! Every operation is one pmstore transaction (serializable, strict two-phase locking on
//! 256-byte stripes, retried on conflicts), so a `&Kv` can be used from many threads.
//! [`Kv::entries`] and [`Kv::check`] read the whole map in one read-only transaction: a
//! consistent snapshot, during which writers wait.

use std::collections::HashSet;
use std::fmt;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use pmstore::alloc::AllocError;
use pmstore::bytemuck::{self, Pod, Zeroable};
use pmstore::{
    CreateOptions, ModeRequest, OpenOptions, PPtr, PSlice, Pool, PoolError, Tx, TxError,
};

/// Layout name of kv pools (a pool made for another layout is refused at open).
pub const LAYOUT: &str = "pmstore-kv";
/// Largest key, in bytes.
pub const MAX_KEY: usize = 64 << 10;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Slots of the first table of a new map.
pub const DEFAULT_INITIAL_SLOTS: u64 = 1024;
/// Number of striped length counters.
pub const COUNTERS: usize = 64;
/// Copies of the head, each in its own lock stripe: a thread reads "its" copy, so readers on
/// different threads do not take shared locks on one stripe (whose lock word would bounce
/// between their cores on every get); a writer of the head writes every copy.
pub const HEAD_COPIES: usize = 8;
/// Slots of the old table moved by one migration step.
pub const MIGRATE_SLOTS: u64 = 16;
/// One mutation in this many runs a migration step (4 slots per mutation on average).
pub const MIGRATE_EVERY: u64 = MIGRATE_SLOTS / 4;
/// Inserts that do not try to resize after a resize did not fit in the pool.
const RESIZE_BACKOFF: u64 = 256;
/// Smallest table.
const MIN_SLOTS: u64 = 64;
/// `Head::magic`: "pmkvmap2".
const MAGIC: u64 = u64::from_le_bytes(*b"pmkvmap2");
/// `Head::version`.
const VERSION: u64 = 3;
/// Bytes of an entry header.
const HEADER: u64 = size_of::<Header>() as u64;
/// `Slot::entry` of a tombstone in an old table: the slot's entry was migrated or deleted
/// (odd: never an entry, which is at least 8-byte aligned).
pub const MOVED: PPtr<Header> = PPtr::from_offset(1);

/// The start of an entry: its key and value bytes follow.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Header {
    /// Key length in bytes.
    pub klen: u32,
    /// Value length in bytes.
    pub vlen: u32,
}

/// A table slot: empty (`entry` null), a tombstone ([`MOVED`], old tables only) or an entry
/// with its key's hash.
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    /// [`hash`] of the entry's key.
    pub hash: u64,
    /// The entry.
    pub entry: PPtr<Header>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.entry.is_null()
    }
    fn is_live(&self) -> bool {
        !self.entry.is_null() && self.entry != MOVED
    }
}

/// What every operation reads first: which tables there are.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Head {
    /// [`MAGIC`] once initialised (0 in a fresh root).
    pub magic: u64,
    /// Format version.
    pub version: u64,
    /// The current table.
    pub cur: PSlice<Slot>,
    /// The table being migrated into `cur` (empty when no resize is in progress).
    pub old: PSlice<Slot>,
}

/// One 256-byte lock stripe holding one word.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Stripe {
    value: u64,
    _pad: [u64; 31],
}

/// One copy of the head, alone in its 256-byte lock stripe.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct HeadStripe {
    head: Head,
    _pad: [u64; 26],
}

/// The root object.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub struct Root {
    heads: [HeadStripe; HEAD_COPIES],
    cursor: Stripe,
    counters: [Stripe; COUNTERS],
}

const _: () = assert!(size_of::<HeadStripe>() == 256);
const _: () = assert!(offset_of!(Root, cursor) == 256 * HEAD_COPIES);
const _: () = assert!(size_of::<Stripe>() == 256);

/// Everything that can go wrong.
#[derive(Debug)]
pub enum KvError {
    /// An error of the store (pool, allocator, transaction); see [`KvError::is_full`].
    Tx(TxError),
    /// A key longer than [`MAX_KEY`].
    KeyTooLarge {
        /// Its length.
        len: usize,
    },
    /// A value longer than [`MAX_VALUE`].
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
    /// Every slot of the table is used and the pool has no room for a larger one.
    TableFull,
    /// The pool is a pool of this layout but its map is not well formed.
    Corrupt(String),
}

impl From<TxError> for KvError {
    fn from(e: TxError) -> KvError {
        KvError::Tx(e)
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Tx(TxError::Alloc(
                AllocError::OutOfSpace { size } | AllocError::TooLarge { size },
            )) => write!(
                f,
                "the pool is full: no room for {size} more bytes (nothing was changed; delete \
                 keys or use a bigger pool)"
            ),
            KvError::TableFull => write!(
                f,
                "the pool is full: every table slot is used and there is no room for a larger \
                 table (nothing was changed; delete keys or use a bigger pool)"
            ),
            KvError::Tx(e @ TxError::Pool(PoolError::LayoutMismatch { .. })) => {
                write!(f, "not a kv pool (it was made for another layout): {e}")
            }
            KvError::Tx(TxError::RootMismatch { .. }) => {
                write!(
                    f,
                    "not a kv pool: its root object is not a kv map's (or it is a map made \
                     by an older kv, before 2026-11-25: its root is smaller)"
                )
            }
            KvError::Tx(e) => write!(f, "{e}"),
            KvError::KeyTooLarge { len } => write!(
                f,
                "key of {len} bytes is larger than the limit of {MAX_KEY} bytes (nothing was \
                 changed)"
            ),
            KvError::ValueTooLarge { len } => write!(
                f,
                "value of {len} bytes is larger than the limit of {MAX_VALUE} bytes (nothing \
                 was changed)"
            ),
            KvError::Corrupt(m) => write!(f, "corrupt kv map: {m}"),
        }
    }
}

impl std::error::Error for KvError {}

impl KvError {
    /// Whether the pool ran out of space (the operation changed nothing).
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            KvError::TableFull
                | KvError::Tx(TxError::Alloc(
                    AllocError::OutOfSpace { .. } | AllocError::TooLarge { .. }
                ))
        )
    }

    /// Whether the file is not a valid kv pool (corrupt, foreign, another layout).
    pub fn is_invalid_pool(&self) -> bool {
        match self {
            KvError::Tx(TxError::RootMismatch { .. }) | KvError::Corrupt(_) => true,
            KvError::Tx(e) => e.is_invalid_pool(),
            _ => false,
        }
    }

    /// Whether another process holds the pool.
    pub fn is_locked(&self) -> bool {
        matches!(self, KvError::Tx(TxError::Pool(PoolError::Locked { .. })))
    }
}

/// Result type of the map.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

fn corrupt(m: impl Into<String>) -> KvError {
    KvError::Corrupt(m.into())
}

/// The key hash (see the module docs): stable, fast, not flooding-resistant.
pub fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (key.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    // MurmurHash3 fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Which length counter an entry with hash `h` belongs to (top 6 bits).
fn counter_of(h: u64) -> usize {
    (h >> 58) as usize
}

/// Whether a mutation of a key with hash `h` runs a migration step (one in
/// [`MIGRATE_EVERY`]).
fn migrates(h: u64) -> bool {
    (h >> 52) % MIGRATE_EVERY == 0
}

/// The most entries one length counter may count before the table of `slots` slots is
/// resized: its share of half the slots (linear probing stays fast up to there: a lookup of
/// an absent key probes 2.5 slots on average at load 1/2, 8.5 at 3/4).
fn counter_limit(slots: u64) -> u64 {
    (slots / 2 / COUNTERS as u64).max(1)
}

/// Where a key was found: `(table, slot index, slot)`.
type Found = (PSlice<Slot>, u64, Slot);

/// Structure of a map, as [`Kv::check`] found it.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Entries reached.
    pub entries: u64,
    /// Sum of the length counters.
    pub len: u64,
    /// Slots of the current table.
    pub slots: u64,
    /// Slots of the old table (0 unless a resize is in progress).
    pub old_slots: u64,
    /// Slots of the old table already migrated.
    pub migrated: u64,
    /// Longest distance of an entry from its home slot.
    pub longest_probe: u64,
    /// Every block the map reaches: root, tables and entries (pool offsets).
    pub blocks: Vec<u64>,
}

/// Statistics of a map (cheap: no entry is read).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Number of entries.
    pub len: u64,
    /// Slots of the current table.
    pub slots: u64,
    /// Slots of the table being migrated (0 if none).
    pub old_slots: u64,
    /// Slots of it already migrated.
    pub migrated: u64,
}

/// A persistent hash map in a pmstore pool (see the module docs). `Sync`: share it by
/// reference between threads.
pub struct Kv {
    pool: Pool,
    root: PPtr<Root>,
    /// Inserts still to go before a resize is tried again after one did not fit (volatile).
    resize_backoff: AtomicU64,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv").field("pool", &self.pool).finish()
    }
}

impl Kv {
    /// Creates a pool file of `size` bytes (refusing an existing file) holding an empty map.
    ///
    /// # Errors
    /// Pool creation errors.
    pub fn create(path: impl AsRef<Path>, size: u64, mode: ModeRequest) -> Result<Kv> {
        Kv::create_with(path, size, mode, DEFAULT_INITIAL_SLOTS)
    }

    /// [`Kv::create`] with a first table of `slots` slots (rounded up to a power of two, at
    /// least 64).
    ///
    /// # Errors
    /// Pool creation errors; out of space if the pool cannot hold the table.
    pub fn create_with(
        path: impl AsRef<Path>,
        size: u64,
        mode: ModeRequest,
        slots: u64,
    ) -> Result<Kv> {
        let pool = Pool::create(path, &CreateOptions::new(LAYOUT, size).mode(mode))?;
        Kv::from_pool_with(pool, slots)
    }

    /// Opens the map in an existing pool file (running recovery after a crash).
    ///
    /// # Errors
    /// Pool open errors (missing, locked, another layout, corrupt, ...); [`KvError::Corrupt`].
    pub fn open(path: impl AsRef<Path>, mode: ModeRequest) -> Result<Kv> {
        let pool = Pool::open(path, &OpenOptions::new(LAYOUT).mode(mode))?;
        Kv::from_pool(pool)
    }

    /// Opens the pool at `path`, or creates it with `size` bytes if there is no file there.
    /// Returns the map and whether it was created.
    ///
    /// # Errors
    /// As [`Kv::open`] and [`Kv::create`].
    pub fn open_or_create(
        path: impl AsRef<Path>,
        size: u64,
        mode: ModeRequest,
    ) -> Result<(Kv, bool)> {
        let path = path.as_ref();
        match Kv::open(path, mode) {
            Err(KvError::Tx(TxError::Pool(PoolError::NotFound { .. }))) => {
                Ok((Kv::create(path, size, mode)?, true))
            }
            r => r.map(|kv| (kv, false)),
        }
    }

    /// The map in an open pool (initialised with an empty map on first use).
    ///
    /// # Errors
    /// [`KvError::Corrupt`], root and allocation errors.
    pub fn from_pool(pool: Pool) -> Result<Kv> {
        Kv::from_pool_with(pool, DEFAULT_INITIAL_SLOTS)
    }

    fn from_pool_with(pool: Pool, slots: u64) -> Result<Kv> {
        let root = pool.root::<Root>()?;
        let kv = Kv {
            pool,
            root,
            resize_backoff: AtomicU64::new(0),
        };
        let slots = slots.max(MIN_SLOTS).next_power_of_two();
        let head = kv.head_ptr();
        kv.pool.transaction(|tx| {
            let h = *tx.get(head)?;
            if h.magic == MAGIC {
                return Ok(());
            }
            if bytemuck::bytes_of(&h).iter().any(|&b| b != 0) {
                return Err(corrupt("bad magic in the root object"));
            }
            let cur = tx.alloc_slice_zeroed::<Slot>(slots)?;
            kv.set_head(tx, |h| {
                *h = Head {
                    magic: MAGIC,
                    version: VERSION,
                    cur,
                    old: PSlice::EMPTY,
                }
            })
        })?;
        kv.pool.read(|tx| check_head(tx.get(head)?).map(|_| ()))?;
        Ok(kv)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Closes the map, returning its pool.
    pub fn into_pool(self) -> Pool {
        self.pool
    }

    /// The head copy this thread reads ([`HEAD_COPIES`]).
    fn head_ptr(&self) -> PPtr<Head> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static COPY: usize = NEXT.fetch_add(1, Ordering::Relaxed) % HEAD_COPIES;
        }
        self.head_copy(COPY.with(|c| *c))
    }

    fn head_copy(&self, i: usize) -> PPtr<Head> {
        PPtr::from_offset(self.root.offset() + (i * size_of::<HeadStripe>()) as u64)
    }

    /// Changes every copy of the head with `f` (in the caller's transaction).
    fn set_head(&self, tx: &mut Tx<'_>, f: impl Fn(&mut Head)) -> Result<()> {
        for i in 0..HEAD_COPIES {
            f(tx.get_mut(self.head_copy(i))?);
        }
        Ok(())
    }

    fn cursor_ptr(&self) -> PPtr<u64> {
        PPtr::from_offset(self.root.offset() + offset_of!(Root, cursor) as u64)
    }

    fn counter_ptr(&self, i: usize) -> PPtr<u64> {
        PPtr::from_offset(
            self.root.offset() + (offset_of!(Root, counters) + i * size_of::<Stripe>()) as u64,
        )
    }

    /// The value of `key`, if present.
    ///
    /// # Errors
    /// Store errors; [`KvError::Corrupt`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut v = Vec::new();
        Ok(self.get_into(key, &mut v)?.then_some(v))
    }

    /// Copies the value of `key` into `out` (replacing its contents); returns whether the key
    /// is present (`out` is left empty if not).
    ///
    /// # Errors
    /// As [`Kv::get`].
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        if key.len() > MAX_KEY {
            return Ok(false);
        }
        let h = hash(key);
        let head = self.head_ptr();
        self.pool.read(|tx| {
            out.clear();
            let hd = check_head(tx.get(head)?)?;
            let Some((_, value)) = find(tx, &hd, h, key, true)? else {
                return Ok(false);
            };
            out.extend_from_slice(value);
            Ok(true)
        })
    }

    /// Whether `key` is present.
    ///
    /// # Errors
    /// As [`Kv::get`].
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        if key.len() > MAX_KEY {
            return Ok(false);
        }
        let h = hash(key);
        let head = self.head_ptr();
        self.pool.read(|tx| {
            let hd = check_head(tx.get(head)?)?;
            Ok(find(tx, &hd, h, key, false)?.is_some())
        })
    }

    /// Sets `key` to `value` in one transaction. Returns whether the key was present (its old
    /// value is replaced).
    ///
    /// # Errors
    /// [`KvError::KeyTooLarge`], [`KvError::ValueTooLarge`] (nothing changed); out of space
    /// ([`KvError::is_full`]: nothing changed); store errors.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        if key.len() > MAX_KEY {
            return Err(KvError::KeyTooLarge { len: key.len() });
        }
        if value.len() > MAX_VALUE {
            return Err(KvError::ValueTooLarge { len: value.len() });
        }
        let resize = self.resize_backoff.load(Ordering::Relaxed) == 0;
        if !resize {
            let _ = self
                .resize_backoff
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        }
        match self.put_tx(key, value, resize) {
            // What did not fit may be the resize this put started (its table, or the log of
            // its table): run the put again without it, and do not try resizing again for a
            // while (a full pool would make every insert try and fail).
            Err(e) if e.is_full() && resize => {
                self.resize_backoff.store(RESIZE_BACKOFF, Ordering::Relaxed);
                self.put_tx(key, value, false)
            }
            r => r,
        }
    }

    /// [`Kv::put`] as one transaction, starting a resize if the table needs one and `resize`.
    fn put_tx(&self, key: &[u8], value: &[u8], resize: bool) -> Result<bool> {
        let h = hash(key);
        let head = self.head_ptr();
        self.pool.transaction(|tx| {
            let hd = check_head(tx.get(head)?)?;
            let found = find(tx, &hd, h, key, false)?.map(|(f, _)| f);
            // Where an insert goes (before allocating: a full table allocates nothing).
            let empty = match found {
                Some(_) => None,
                None => Some(empty_slot(tx, hd.cur, h)?),
            };
            // The new entry (allocate only once the insert is known to fit in the table).
            let len = HEADER + key.len() as u64 + value.len() as u64;
            let block = tx.alloc_slice_zeroed::<u8>(len)?;
            {
                let bytes = tx.get_slice_mut(block)?;
                let header = Header {
                    klen: key.len() as u32,
                    vlen: value.len() as u32,
                };
                let (hb, rest) = bytes.split_at_mut(HEADER as usize);
                hb.copy_from_slice(bytemuck::bytes_of(&header));
                let (kb, vb) = rest.split_at_mut(key.len());
                kb.copy_from_slice(key);
                vb.copy_from_slice(value);
            }
            let e: PPtr<Header> = block.as_ptr().cast();
            match (found, empty) {
                (Some((table, i, s)), _) => {
                    tx.get_mut(table.at(i))?.entry = e;
                    tx.free(s.entry)?;
                    if migrates(h) {
                        self.grow(tx, &hd, h, 0, false)?;
                    }
                    Ok(true)
                }
                (None, Some(i)) => {
                    *tx.get_mut(hd.cur.at(i))? = Slot { hash: h, entry: e };
                    let c = tx.get_mut(self.counter_ptr(counter_of(h)))?;
                    *c += 1;
                    let count = *c;
                    self.grow(tx, &hd, h, count, resize)?;
                    Ok(false)
                }
                (None, None) => unreachable!("an insert has a slot"),
            }
        })
    }

    /// Removes `key` in one transaction; returns whether it was present.
    ///
    /// # Errors
    /// Store errors.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        if key.len() > MAX_KEY {
            return Ok(false);
        }
        let h = hash(key);
        let head = self.head_ptr();
        self.pool.transaction(|tx| {
            let hd = check_head(tx.get(head)?)?;
            let Some(((table, i, s), _)) = find(tx, &hd, h, key, false)? else {
                return Ok(false);
            };
            if table == hd.cur {
                remove_slot(tx, table, i)?;
            } else {
                // The old table keeps its probe runs: a tombstone.
                tx.get_mut(table.at(i))?.entry = MOVED;
            }
            tx.free(s.entry)?;
            let c = tx.get_mut(self.counter_ptr(counter_of(h)))?;
            *c = c
                .checked_sub(1)
                .ok_or_else(|| corrupt("length counter underflow"))?;
            if migrates(h) {
                self.grow(tx, &hd, h, 0, false)?;
            }
            Ok(true)
        })
    }

    /// After a mutation of a key with hash `h` whose counter now holds `count`: starts a
    /// resize if the table is over its load factor (and `resize`), or runs a migration step if
    /// a resize is in progress and this mutation is one that migrates (or the new table is
    /// over its load factor already).
    fn grow(&self, tx: &mut Tx<'_>, hd: &Head, h: u64, count: u64, resize: bool) -> Result<()> {
        let over = count > counter_limit(hd.cur.len());
        if hd.old.is_empty() {
            if over && resize {
                self.start_resize(tx, hd)?;
            }
            Ok(())
        } else if migrates(h) || over {
            self.migrate_step(tx, hd)
        } else {
            Ok(())
        }
    }

    /// Allocates a table twice as large as `cur` and makes it current; `cur` becomes `old`.
    /// Skipped if the pool has no room for it.
    fn start_resize(&self, tx: &mut Tx<'_>, hd: &Head) -> Result<()> {
        let new = match tx.alloc_slice_zeroed::<Slot>(hd.cur.len() * 2) {
            Ok(s) => s,
            Err(TxError::Alloc(AllocError::OutOfSpace { .. } | AllocError::TooLarge { .. })) => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.set_head(tx, |h| {
            h.old = h.cur;
            h.cur = new;
        })
    }

    /// Moves the next [`MIGRATE_SLOTS`] slots of `old` to `cur`; frees `old` after the last.
    fn migrate_step(&self, tx: &mut Tx<'_>, hd: &Head) -> Result<()> {
        let n = hd.old.len();
        let cursor = self.cursor_ptr();
        let start = *tx.get_mut(cursor)?;
        if start >= n {
            return Err(corrupt(format!(
                "migration cursor {start} past the old table ({n} slots)"
            )));
        }
        let end = (start + MIGRATE_SLOTS).min(n);
        // The run of old slots is tombstoned as one range (one shadow instead of one per
        // slot). It is read slot by slot, before that shadow is taken.
        let run = PSlice::<Slot>::from_raw_parts(
            hd.old.offset() + start * size_of::<Slot>() as u64,
            end - start,
        );
        let mut moved = [Slot::zeroed(); MIGRATE_SLOTS as usize];
        let mut live = 0;
        for o in start..end {
            let s = *tx.get(hd.old.at(o))?;
            if s.is_live() {
                moved[live] = s;
                live += 1;
            }
        }
        if live > 0 {
            for s in tx.get_slice_mut(run)? {
                if s.is_live() {
                    s.entry = MOVED;
                }
            }
        }
        for s in &moved[..live] {
            let i = empty_slot(tx, hd.cur, s.hash)?;
            *tx.get_mut(hd.cur.at(i))? = *s;
        }
        if end == n {
            tx.free_slice(hd.old)?;
            self.set_head(tx, |h| h.old = PSlice::EMPTY)?;
            *tx.get_mut(cursor)? = 0;
        } else {
            *tx.get_mut(cursor)? = end;
        }
        Ok(())
    }

    /// Finishes a resize in progress, one migration step per transaction (for tools and
    /// tests; the map does this incrementally on its own).
    ///
    /// # Errors
    /// Store errors.
    pub fn finish_resize(&self) -> Result<()> {
        let head = self.head_ptr();
        loop {
            let done = self.pool.transaction(|tx| {
                let hd = check_head(tx.get(head)?)?;
                if hd.old.is_empty() {
                    return Ok(true);
                }
                self.migrate_step(tx, &hd)?;
                Ok::<_, KvError>(false)
            })?;
            if done {
                return Ok(());
            }
        }
    }

    /// Number of entries (the sum of the length counters, read in one transaction).
    ///
    /// # Errors
    /// Store errors.
    pub fn len(&self) -> Result<u64> {
        self.pool.read(|tx| {
            let mut n = 0u64;
            for i in 0..COUNTERS {
                n += *tx.get(self.counter_ptr(i))?;
            }
            Ok(n)
        })
    }

    /// Whether the map is empty.
    ///
    /// # Errors
    /// Store errors.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Table sizes and length.
    ///
    /// # Errors
    /// Store errors.
    pub fn stats(&self) -> Result<Stats> {
        let len = self.len()?;
        let head = self.head_ptr();
        let (hd, cursor) = self.pool.read(|tx| {
            Ok::<_, KvError>((check_head(tx.get(head)?)?, *tx.get(self.cursor_ptr())?))
        })?;
        Ok(Stats {
            len,
            slots: hd.cur.len(),
            old_slots: hd.old.len(),
            migrated: cursor,
        })
    }

    /// Calls `f` for every entry of a consistent snapshot (taken in one read-only
    /// transaction, during which writers wait; `f` runs afterwards, on a copy).
    ///
    /// # Errors
    /// Store errors.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        for (k, v) in self.entries()? {
            f(&k, &v);
        }
        Ok(())
    }

    /// Every `(key, value)`, in table order, from a consistent snapshot (one read-only
    /// transaction).
    ///
    /// # Errors
    /// Store errors; [`KvError::Corrupt`].
    pub fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let head = self.head_ptr();
        self.pool.read(|tx| {
            let hd = check_head(tx.get(head)?)?;
            let mut out = Vec::new();
            for table in [hd.old, hd.cur] {
                if table.is_empty() {
                    continue;
                }
                for s in tx.get_slice(table)? {
                    if s.is_live() {
                        let eh = *tx.get(s.entry)?;
                        out.push((
                            tx.get_slice(key_of(s.entry, &eh))?.to_vec(),
                            tx.get_slice(value_of(s.entry, &eh))?.to_vec(),
                        ));
                    }
                }
            }
            Ok(out)
        })
    }

    /// Checks the whole structure in one read-only transaction: tables of the right sizes;
    /// every entry readable, its key hashing to its slot's hash, reachable from its home slot
    /// (no empty slot in between), present once; no tombstone in the current table; the old
    /// table's slots below the migration cursor migrated; every length counter equal to the
    /// number of entries it counts. Returns what it found, including every block the map
    /// reaches (compare with the allocator with [`Kv::check_allocator`]).
    ///
    /// # Errors
    /// [`KvError::Corrupt`] describing the first problem; store errors.
    pub fn check(&self) -> Result<CheckReport> {
        let head = self.head_ptr();
        self.pool.read(|tx| {
            let hd = check_head(tx.get(head)?)?;
            for i in 0..HEAD_COPIES {
                if bytemuck::bytes_of(tx.get(self.head_copy(i))?) != bytemuck::bytes_of(&hd) {
                    return Err(corrupt(format!("head copy {i} differs from the others")));
                }
            }
            let cursor = *tx.get(self.cursor_ptr())?;
            let mut r = CheckReport {
                slots: hd.cur.len(),
                old_slots: hd.old.len(),
                migrated: if hd.old.is_empty() { 0 } else { cursor },
                blocks: vec![self.root.offset(), hd.cur.offset()],
                ..CheckReport::default()
            };
            if hd.old.is_empty() {
                if cursor != 0 {
                    return Err(corrupt(format!(
                        "cursor {cursor} with no resize in progress"
                    )));
                }
            } else {
                r.blocks.push(hd.old.offset());
                if cursor >= hd.old.len() {
                    return Err(corrupt(format!("cursor {cursor} past the old table")));
                }
            }
            let mut counts = [0u64; COUNTERS];
            let mut keys = HashSet::new();
            for table in [hd.old, hd.cur] {
                if table.is_empty() {
                    continue;
                }
                let is_old = table == hd.old;
                let slots = tx.get_slice(table)?;
                let mask = table.len() - 1;
                for (i, s) in slots.iter().enumerate() {
                    let i = i as u64;
                    if s.entry == MOVED && !is_old {
                        return Err(corrupt(format!("tombstone in the current table at {i}")));
                    }
                    if !s.is_live() {
                        continue;
                    }
                    if is_old && i < cursor {
                        return Err(corrupt(format!(
                            "old slot {i} below the migration cursor {cursor} is live"
                        )));
                    }
                    // Reachable from its home: no empty slot in [home, i).
                    let mut j = s.hash & mask;
                    let mut dist = 0;
                    while j != i {
                        if slots[j as usize].is_empty() {
                            return Err(corrupt(format!(
                                "slot {i} cannot be reached from its home {}",
                                s.hash & mask
                            )));
                        }
                        j = (j + 1) & mask;
                        dist += 1;
                    }
                    r.longest_probe = r.longest_probe.max(dist);
                    if s.entry.offset() % 8 != 0 {
                        return Err(corrupt(format!("slot {i}: misaligned entry {:?}", s.entry)));
                    }
                    let eh = *tx.get(s.entry)?;
                    let key = tx.get_slice(key_of(s.entry, &eh))?;
                    if hash(key) != s.hash {
                        return Err(corrupt(format!("slot {i}: hash is not its key's")));
                    }
                    tx.get_slice(value_of(s.entry, &eh))?;
                    if !keys.insert(key.to_vec()) {
                        return Err(corrupt(format!("duplicate key {:?}", key.escape_ascii())));
                    }
                    counts[counter_of(s.hash)] += 1;
                    r.blocks.push(s.entry.offset());
                }
            }
            for (i, &c) in counts.iter().enumerate() {
                let stored = *tx.get(self.counter_ptr(i))?;
                if stored != c {
                    return Err(corrupt(format!(
                        "length counter {i} says {stored}, {c} entries found"
                    )));
                }
                r.len += stored;
            }
            r.entries = keys.len() as u64;
            Ok(r)
        })
    }

    /// Compares the allocator's live blocks with the blocks the map reaches ([`Kv::check`]):
    /// they must be the same set (no leak, nothing reachable that is free).
    ///
    /// # Errors
    /// [`KvError::Corrupt`] naming the difference.
    pub fn check_allocator(&self, report: &CheckReport) -> Result<()> {
        let mut live = Vec::new();
        let pool = self.pool();
        pool.heap()
            .for_each_allocated(pool.raw(), |off, _| live.push(off))
            .map_err(TxError::from)?;
        let mut reached = report.blocks.clone();
        reached.sort_unstable();
        live.sort_unstable();
        if reached != live {
            let a: HashSet<_> = reached.iter().copied().collect();
            let b: HashSet<_> = live.iter().copied().collect();
            let leaked: Vec<_> = b.difference(&a).take(5).collect();
            let dangling: Vec<_> = a.difference(&b).take(5).collect();
            return Err(corrupt(format!(
                "allocator has {} live blocks, the map reaches {}: leaked {leaked:x?}, \
                 reached but not allocated {dangling:x?}",
                live.len(),
                reached.len()
            )));
        }
        Ok(())
    }
}

/// Checks a head read from the pool.
fn check_head(h: &Head) -> Result<Head> {
    let h = *h;
    if h.magic != MAGIC {
        return Err(corrupt("bad magic in the root object"));
    }
    if h.version != VERSION {
        return Err(corrupt(format!("unsupported map version {}", h.version)));
    }
    let n = h.cur.len();
    if !n.is_power_of_two() || n < MIN_SLOTS {
        return Err(corrupt(format!("table of {n} slots")));
    }
    if !h.old.is_empty() && h.old.len() * 2 != n {
        return Err(corrupt(format!(
            "old table of {} slots with a new one of {n}",
            h.old.len()
        )));
    }
    Ok(h)
}

fn key_of(e: PPtr<Header>, eh: &Header) -> PSlice<u8> {
    PSlice::from_raw_parts(e.offset() + HEADER, u64::from(eh.klen))
}

fn value_of(e: PPtr<Header>, eh: &Header) -> PSlice<u8> {
    PSlice::from_raw_parts(e.offset() + HEADER + u64::from(eh.klen), u64::from(eh.vlen))
}

/// Looks `key` (hash `h`) up in `table`: probes from its home slot to the first empty one.
/// Returns where it is and, with `value`, its value bytes (else an empty slice).
fn find_in<'t>(
    tx: &'t Tx<'_>,
    table: PSlice<Slot>,
    h: u64,
    key: &[u8],
    value: bool,
) -> Result<Option<(Found, &'t [u8])>> {
    let mask = table.len() - 1;
    let mut i = h & mask;
    let mut left = table.len();
    while left > 0 {
        let window = slot_window(table, i, left);
        for (j, s) in tx.get_slice(window)?.iter().enumerate() {
            if s.is_empty() {
                return Ok(None);
            }
            if s.hash == h && s.entry != MOVED {
                if let Some(v) = entry_value(tx, s.entry, key, value)? {
                    return Ok(Some(((table, i + j as u64, *s), v)));
                }
            }
        }
        left -= window.len();
        i = (i + window.len()) & mask;
    }
    Ok(None)
}

/// Whether entry `e` holds `key`: then `Some` of its value bytes with `value` (else of an empty
/// slice). The key and the value are read with one [`Tx::get_slice`] (they follow each other):
/// a get reads an entry with two reads (header, then key and value), usually under one stripe
/// lock, instead of three. (A hash collision with a key of the same length thus also reads the
/// other entry's value: rare enough.)
fn entry_value<'t>(
    tx: &'t Tx<'_>,
    e: PPtr<Header>,
    key: &[u8],
    value: bool,
) -> Result<Option<&'t [u8]>> {
    let eh = *tx.get(e)?;
    if eh.klen as usize != key.len() {
        return Ok(None);
    }
    let vlen = if value { u64::from(eh.vlen) } else { 0 };
    let bytes = tx.get_slice(PSlice::<u8>::from_raw_parts(
        e.offset() + HEADER,
        u64::from(eh.klen) + vlen,
    ))?;
    let (k, v) = bytes.split_at(key.len());
    Ok((k == key).then_some(v))
}

/// The slots of `table` from `i` to the end of `i`'s 256-byte lock stripe (at most `left`, not
/// past the table's end): a probe reads them with one [`Tx::get_slice`], i.e. one lock
/// acquisition, instead of one [`Tx::get`] per slot.
fn slot_window(table: PSlice<Slot>, i: u64, left: u64) -> PSlice<Slot> {
    const STRIPE: u64 = 256;
    let off = table.at(i).offset();
    let in_stripe = (STRIPE - off % STRIPE) / size_of::<Slot>() as u64;
    let len = in_stripe.max(1).min(table.len() - i).min(left);
    PSlice::from_raw_parts(off, len)
}

/// Looks `key` up in the old table (if a resize is in progress), then in the current one.
/// Returns what [`find_in`] does.
fn find<'t>(
    tx: &'t Tx<'_>,
    hd: &Head,
    h: u64,
    key: &[u8],
    value: bool,
) -> Result<Option<(Found, &'t [u8])>> {
    if !hd.old.is_empty() {
        if let Some(f) = find_in(tx, hd.old, h, key, value)? {
            return Ok(Some(f));
        }
    }
    find_in(tx, hd.cur, h, key, value)
}

/// The first empty slot of `table` from the home of hash `h`.
fn empty_slot(tx: &Tx<'_>, table: PSlice<Slot>, h: u64) -> Result<u64> {
    let mask = table.len() - 1;
    let mut i = h & mask;
    let mut left = table.len();
    while left > 0 {
        let window = slot_window(table, i, left);
        if let Some(j) = tx.get_slice(window)?.iter().position(Slot::is_empty) {
            return Ok(i + j as u64);
        }
        left -= window.len();
        i = (i + window.len()) & mask;
    }
    Err(KvError::TableFull)
}

/// Empties slot `i` of a linear-probing table without a tombstone: later slots of its probe
/// run whose home is not in `(i, j]` move back into the hole (backward-shift deletion).
fn remove_slot(tx: &mut Tx<'_>, table: PSlice<Slot>, mut i: u64) -> Result<()> {
    let mask = table.len() - 1;
    let mut j = i;
    loop {
        j = (j + 1) & mask;
        let s = *tx.get(table.at(j))?;
        if s.is_empty() || j == i {
            break;
        }
        let home = s.hash & mask;
        // Whether `home` lies cyclically in (i, j]: then `s` must stay where it is.
        let stays = if i <= j {
            i < home && home <= j
        } else {
            i < home || home <= j
        };
        if !stays {
            *tx.get_mut(table.at(i))? = s;
            i = j;
        }
    }
    *tx.get_mut(table.at(i))? = Slot::zeroed();
    Ok(())
}

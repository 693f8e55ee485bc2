//! # pmstore-tx
//!
//! Transactions, typed persistent pointers, the root object and recovery for pmstore: safe Rust
//! over persistent memory.
//!
//! ```
//! use pmstore_tx::{pfield, CreateOptions, PPtr, Pool, TxError};
//! use bytemuck::{Pod, Zeroable};
//!
//! #[derive(Clone, Copy, Pod, Zeroable)]
//! #[repr(C)]
//! struct Root { count: u64, head: PPtr<Node> }
//! #[derive(Clone, Copy, Pod, Zeroable)]
//! #[repr(C)]
//! struct Node { value: u64, next: PPtr<Node> }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let pool = Pool::create(dir.path().join("list.pool"), &CreateOptions::new("list", 8 << 20))?;
//! let root = pool.root::<Root>()?;            // zeroed on first use
//! pool.transaction(|tx| {
//!     let head = tx.get(root)?.head;
//!     let node = tx.alloc(Node { value: 42, next: head })?;
//!     let r = tx.get_mut(root)?;              // a private copy, logged at commit
//!     r.head = node;
//!     r.count += 1;
//!     Ok::<_, TxError>(())
//! })?;                                        // durable here: one redo log
//! let count = pool.read(|tx| Ok::<_, TxError>(tx.get(pfield!(root, Root, count))?.clone()))?;
//! assert_eq!(count, 1);
//! # Ok::<(), TxError>(())
//! ```
//!
//! ## Model
//!
//! * [`Pool`]: a pool file opened for transactions. Opening runs **recovery**: committed
//!   transactions whose application was cut short by a crash are finished, uncommitted ones
//!   never reached the pool (`docs/FORMAT.md` §7).
//! * [`PPtr<T>`]: a typed pool offset, `Copy`, valid across runs and mapping addresses. Types
//!   stored in the pool are [`bytemuck::Pod`]: plain data with no references, no `Box`, no
//!   padding; a `PPtr` is itself `Pod` so it can be stored.
//! * [`Pool::root`]: the typed root object from which everything else is reachable.
//! * [`Pool::transaction`] runs a closure with a [`Tx`]: `Ok` commits, `Err` or a panic aborts
//!   (the `Tx` is dropped; nothing was written to the pool, so there is nothing to roll back).
//!   [`Tx::nested`] flattens a nested transaction into the outer one; its failure aborts the
//!   whole.
//! * [`Pool::read`] runs a closure with a read-only `&Tx`: consistent reads outside any
//!   writing transaction, through shared references only.
//!
//! ## How a transaction works
//!
//! `Tx::get_mut` and `Tx::alloc` never hand out a reference into the pool: they return a
//! reference into a private **shadow copy** (whole cache lines) owned by the transaction. At
//! commit the shadows are compared with the pool, and the runs of 8-byte words that changed
//! go into **one redo log** in the committing thread's lane, together with the allocator's
//! bitmap and chunk-header updates for the transaction's allocations and frees. The log is
//! checksummed (CRC-32C) and sequence-numbered, so it needs no zeroing pass: drain #1 makes it
//! durable (the commit point). With cache flushes the values of a transaction that neither
//! allocates nor frees are then stored (non-temporal stores for whole lines) and drain #2 makes
//! them durable: **two drains**, one flush per modified cache line. A small transaction that
//! allocates or frees, and in msync mode every small transaction, has its values stored with
//! ordinary stores and made durable by the lane's next commit (deferred apply): **one drain,
//! one `msync`** (formats: `docs/REDO.md`; design: `docs/TX.md`).
//!
//! A forgotten snapshot cannot happen: there is no way to obtain `&mut` into pool memory.
//!
//! ## Isolation and the soundness argument
//!
//! Transactions are **serializable**, by strict two-phase locking on a volatile lock table
//! ([`locks`]) keyed by pool offset (256-byte stripes): [`Tx::get`] takes a shared lock on the
//! bytes it reads, [`Tx::get_mut`], [`Tx::alloc`] and [`Tx::free`] an exclusive lock, and all
//! are held until the transaction ends. The lock state is volatile, so after a crash every
//! object is unlocked (the equivalent of PMDK's run-id reset of `PMEMmutex`). A transaction that
//! cannot get a lock within a bounded wait is aborted and run again (deadlocks resolve
//! themselves; `Pool::transaction`'s closure may run more than once).
//!
//! Why safe code cannot cause a data race or undefined behaviour:
//!
//! 1. Pool bytes are written only by commits (and by recovery, before the `Pool` exists).
//!    A commit writes only the lines of its shadows and the blocks it frees, all under
//!    exclusive locks it holds until its writes are done; heap metadata and lanes are written
//!    by the allocator under its own locks and are never reachable through a `PPtr`
//!    ([`Tx::get`] accepts only pointers into the heap's object region).
//! 2. A reference into the pool (from [`Tx::get`]) exists only while its transaction holds a
//!    shared lock on those bytes: its lifetime is tied to the `&Tx` borrow, and the `&mut Tx`
//!    the closure receives cannot escape the closure (it is borrowed for a higher-ranked
//!    lifetime), so no reference outlives the transaction and its locks.
//! 3. Every access checks the pointer (not null, aligned for `T`, inside the object region,
//!    not freed in this transaction), and `T: Pod` makes every bit pattern a valid `T`: a
//!    stale, dangling or forged `PPtr` yields wrong data or an error, never UB.
//! 4. `&mut T` from [`Tx::get_mut`] points into the transaction's own shadow, borrowed from
//!    `&mut Tx`: exclusive by the borrow checker.
//!
//! The unsafe code of this crate is one small module (`raw`: references into the mapping) and
//! the call to the allocator's `publish_ranges_with`, whose contract the locks above meet.
//!
//! A `&mut` into the pool cannot escape a transaction:
//!
//! ```compile_fail,E0521
//! # use pmstore_tx::{Pool, PPtr, TxError};
//! # fn f(pool: &Pool, p: PPtr<u64>) {
//! let mut leaked: Option<&mut u64> = None;
//! pool.transaction(|tx| {
//!     leaked = Some(tx.get_mut(p)?); // error: borrowed data escapes the closure
//!     Ok::<_, TxError>(())
//! });
//! # }
//! ```
//!
//! Neither can a shared reference:
//!
//! ```compile_fail
//! # use pmstore_tx::{Pool, PPtr, TxError};
//! # fn f(pool: &Pool, p: PPtr<u64>) {
//! let r: &u64 = pool.read(|tx| tx.get(p)).unwrap(); // error: returns a reference to the tx
//! # }
//! ```
//!
//! Only plain data can be stored — not a heap pointer:
//!
//! ```compile_fail,E0277
//! # use pmstore_tx::{Pool, TxError};
//! # fn f(pool: &Pool) {
//! pool.transaction(|tx| {
//!     tx.alloc(Vec::<u8>::new())?; // error: Vec<u8> is not Pod
//!     Ok::<_, TxError>(())
//! });
//! # }
//! ```
//!
//! nor a reference:
//!
//! ```compile_fail,E0277
//! # use pmstore_tx::{Pool, TxError};
//! # fn f(pool: &Pool) {
//! static X: u64 = 1;
//! pool.transaction(|tx| {
//!     tx.alloc(&X)?; // error: &u64 is not Pod
//!     Ok::<_, TxError>(())
//! });
//! # }
//! ```
//!
//! and modifying needs `&mut Tx`, which [`Pool::read`] does not give:
//!
//! ```compile_fail,E0596
//! # use pmstore_tx::{Pool, PPtr, TxError};
//! # fn f(pool: &Pool, p: PPtr<u64>) {
//! pool.read(|tx| {
//!     *tx.get_mut(p)? = 1; // error: `tx` is a `&` reference
//!     Ok::<_, TxError>(())
//! });
//! # }
//! ```

mod diff;
mod error;
#[doc(hidden)]
pub mod locks;
mod objpool;
mod pptr;
#[doc(hidden)]
pub mod primitive;
mod raw;
mod tx;

pub use error::{Result, TxError};
pub use objpool::{Pool, ROOT_ENTRY_SIZE};
pub use pptr::{PPtr, PSlice};
pub use tx::{CommitInfo, Tx, MAX_ALIGN};

pub use bytemuck;
pub use pmstore_alloc as alloc;
pub use pmstore_pool as pool;
pub use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, PersistMode};

//! The transaction layer's error type.

use pmstore_alloc::AllocError;
use pmstore_pool::PoolError;

/// Result type of the transaction layer.
pub type Result<T, E = TxError> = std::result::Result<T, E>;

/// Everything that can go wrong in the transaction layer.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CreateOptions, PPtr, Pool, TxError};
/// # let dir = tempfile::tempdir()?;
/// let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
/// let r = pool.read(|tx| tx.get(PPtr::<u64>::NULL).copied());
/// assert!(matches!(r, Err(TxError::Null)));
/// let forged = PPtr::<u64>::from_offset(8); // inside the pool header
/// let r = pool.read(|tx| tx.get(forged).copied());
/// assert!(matches!(r, Err(TxError::InvalidPointer { offset: 8, len: 8 })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// An error of the pool layer (open/create, I/O, msync failure, poisoned pool, ...).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// An error of the allocator (out of space, invalid or double free, corrupt heap or log).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A null [`PPtr`](crate::PPtr) was dereferenced or freed.
    #[error("null persistent pointer")]
    Null,
    /// A pointer whose object does not lie inside the pool's object region (the heap's chunk
    /// data): never dereferenced.
    #[error("persistent pointer {offset:#x} (+{len} bytes) is outside the pool's object region")]
    InvalidPointer {
        /// The pointer's offset.
        offset: u64,
        /// The size of the object it was used for.
        len: u64,
    },
    /// A pointer not aligned for its type (or a type aligned to more than 64 bytes).
    #[error("persistent pointer {offset:#x} is not aligned to {align} bytes for its type")]
    Misaligned {
        /// The pointer's offset.
        offset: u64,
        /// The alignment its type needs.
        align: usize,
    },
    /// Another transaction holds a conflicting lock. [`Pool::transaction`](crate::Pool::transaction)
    /// aborts and retries the transaction on its own; you see this error only if you call
    /// the closure's operations outside that loop or keep going after one failed.
    #[error("conflict with a concurrent transaction (the transaction is retried)")]
    Conflict,
    /// A nested transaction ([`Tx::nested`](crate::Tx::nested)) failed, so the whole
    /// transaction was aborted, although the outer closure returned `Ok`.
    #[error("a nested transaction failed: the whole transaction was aborted")]
    Aborted,
    /// The object was freed earlier in this transaction.
    #[error("use of {offset:#x} after it was freed in this transaction")]
    UseAfterFree {
        /// The pointer's offset.
        offset: u64,
    },
    /// The same block was freed twice in one transaction.
    #[error("double free of {offset:#x} in this transaction")]
    DoubleFree {
        /// The pointer's offset.
        offset: u64,
    },
    /// A reserved (must-be-zero) byte of the root area is not zero: the pool was written by a
    /// buggy or foreign writer (`docs/FORMAT.md` §6.1). Found after log recovery; nothing else
    /// was modified.
    #[error("root area byte at pool offset {offset:#x} is reserved but not zero")]
    CorruptRootArea {
        /// Pool offset of the first non-zero reserved byte.
        offset: u64,
    },
    /// The root object exists with another size than the type asked for.
    #[error("the root object has {stored} bytes; {requested} were requested")]
    RootMismatch {
        /// Size of the stored root object.
        stored: u64,
        /// Size of the type asked for.
        requested: u64,
    },
    /// [`Pool::transaction`](crate::Pool::transaction) or
    /// [`Pool::read`](crate::Pool::read) was called on a pool while this thread is inside a
    /// transaction on the same pool: use [`Tx::nested`](crate::Tx::nested) (the inner one
    /// would wait for the outer one's locks forever).
    #[error("a transaction on this pool is already running on this thread: use Tx::nested")]
    NestedTransaction,
    /// The pool was opened read-only and the transaction writes.
    #[error("the pool is open read-only")]
    ReadOnly,
    /// The transaction's log needs more than the largest log there is room for.
    #[error("transaction too large: its log needs {needed} bytes")]
    TooLarge {
        /// Bytes its redo log needs.
        needed: u64,
    },
}

impl TxError {
    /// Whether the error means "not a valid pool for this program" (wrong file, corrupt,
    /// foreign, another layout, unsupported version) as opposed to an environment error.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_tx::{CreateOptions, OpenOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("doc.pool");
    /// drop(Pool::create(&path, &CreateOptions::new("doc", 8 << 20))?);
    /// let err = Pool::open(&path, &OpenOptions::new("another-app")).unwrap_err();
    /// assert!(err.is_invalid_pool()); // not a pool for this program
    /// assert!(!TxError::Conflict.is_invalid_pool());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_invalid_pool(&self) -> bool {
        match self {
            TxError::Pool(e) => e.is_invalid_pool(),
            TxError::CorruptRootArea { .. } => true,
            TxError::Alloc(
                AllocError::CorruptLog { .. }
                | AllocError::CorruptHeap { .. }
                | AllocError::LaneTooSmall { .. },
            ) => true,
            _ => false,
        }
    }
}

//! Typed persistent pointers.

use std::fmt;
use std::marker::PhantomData;

use bytemuck::{Pod, Zeroable};

/// A typed pointer into a pool: the object's offset from the start of the pool, so it stays
/// valid across runs and mapping addresses. `Copy`, 8 bytes, and itself plain data, so it can be
/// stored in persistent objects.
///
/// A `PPtr` is only an offset: holding one grants nothing. Every dereference goes through a
/// transaction ([`Tx::get`](crate::Tx::get), [`Tx::get_mut`](crate::Tx::get_mut)), which checks
/// that the object lies in the pool's object regions and is aligned for `T`, and locks it, so
/// a stale, dangling or forged `PPtr` can yield wrong data or an error, never undefined
/// behaviour. The all-zero value is [`PPtr::NULL`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CreateOptions, PPtr, Pool, TxError};
/// use bytemuck::{Pod, Zeroable};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Node { value: u64, next: PPtr<Node> } // a PPtr is plain data: it can be stored
///
/// # let dir = tempfile::tempdir()?;
/// let pool = Pool::create(dir.path().join("list.pool"), &CreateOptions::new("list", 8 << 20))?;
/// let root = pool.root::<PPtr<Node>>()?; // the root holds the list's head
/// pool.transaction(|tx| {
///     let second = tx.alloc(Node { value: 2, next: PPtr::NULL })?;
///     let first = tx.alloc(Node { value: 1, next: second })?;
///     *tx.get_mut(root)? = first;
///     Ok::<_, TxError>(())
/// })?;
/// let sum = pool.read(|tx| {
///     let (mut sum, mut p) = (0, *tx.get(root)?);
///     while !p.is_null() {
///         let node = tx.get(p)?;
///         sum += node.value;
///         p = node.next;
///     }
///     Ok::<_, TxError>(sum)
/// })?;
/// assert_eq!(sum, 3);
/// # Ok(())
/// # }
/// ```
#[repr(transparent)]
pub struct PPtr<T> {
    offset: u64,
    _type: PhantomData<fn() -> T>,
}

// Layout contract: a PPtr is stored in the pool as one little-endian u64 offset.
const _: () = assert!(std::mem::size_of::<PPtr<[u8; 64]>>() == 8);

impl<T> PPtr<T> {
    /// The null pointer (offset 0, which is inside the pool header, never an object).
    pub const NULL: PPtr<T> = PPtr::from_offset(0);

    /// A pointer to the object at pool offset `offset` (not checked until it is used).
    ///
    /// ```
    /// use pmstore_tx::PPtr;
    ///
    /// let p: PPtr<u64> = PPtr::from_offset(1 << 20);
    /// assert_eq!(p.offset(), 1 << 20);
    /// assert_eq!(PPtr::<u64>::from_offset(0), PPtr::NULL);
    /// ```
    pub const fn from_offset(offset: u64) -> PPtr<T> {
        PPtr {
            offset,
            _type: PhantomData,
        }
    }

    /// The object's offset in the pool.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_tx::{CreateOptions, Pool};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let root = pool.root::<[u64; 4]>()?;
    /// assert_eq!(root.offset() % 8, 0); // aligned for its type
    /// assert_eq!(root.index(2).offset(), root.offset() + 16);
    /// # Ok(())
    /// # }
    /// ```
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Whether this is [`PPtr::NULL`].
    ///
    /// ```
    /// use pmstore_tx::PPtr;
    ///
    /// assert!(PPtr::<u64>::NULL.is_null());
    /// assert!(PPtr::<u64>::default().is_null());
    /// assert!(!PPtr::<u64>::from_offset(4096).is_null());
    /// ```
    pub const fn is_null(self) -> bool {
        self.offset == 0
    }

    /// The same offset, viewed as another type.
    ///
    /// ```
    /// use pmstore_tx::PPtr;
    ///
    /// let words: PPtr<[u64; 2]> = PPtr::from_offset(4096);
    /// let bytes: PPtr<[u8; 16]> = words.cast();
    /// assert_eq!(bytes.offset(), words.offset());
    /// ```
    pub const fn cast<U>(self) -> PPtr<U> {
        PPtr::from_offset(self.offset)
    }

    /// A pointer to a field of the object, `offset` bytes in, with the field's type taken from
    /// `field` (an accessor such as `|t: &T| &t.x`); use [`pfield!`](crate::pfield) instead of
    /// calling this directly.
    ///
    /// ```
    /// use pmstore_tx::{pfield, PPtr};
    /// use bytemuck::{Pod, Zeroable};
    ///
    /// #[derive(Clone, Copy, Pod, Zeroable)]
    /// #[repr(C)]
    /// struct Pair { a: u64, b: u32, c: u32 }
    ///
    /// let p: PPtr<Pair> = PPtr::from_offset(4096);
    /// let c: PPtr<u32> = pfield!(p, Pair, c); // what the macro expands to:
    /// assert_eq!(c, p.project(std::mem::offset_of!(Pair, c), |t: &Pair| &t.c));
    /// assert_eq!(c.offset(), 4096 + 12);
    /// ```
    pub fn project<F>(self, offset: usize, field: fn(&T) -> &F) -> PPtr<F> {
        let _ = field;
        PPtr::from_offset(self.offset + offset as u64)
    }
}

impl<T, const N: usize> PPtr<[T; N]> {
    /// A pointer to element `i` of the array.
    ///
    /// # Panics
    /// If `i >= N`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let table = pool.root::<[u64; 8]>()?;
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(table.index(3))? = 33; // logs only that element
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let all = pool.read(|tx| Ok::<_, TxError>(*tx.get(table)?))?;
    /// assert_eq!(all, [0, 0, 0, 33, 0, 0, 0, 0]);
    /// assert!(std::panic::catch_unwind(|| table.index(8)).is_err()); // out of bounds
    /// # Ok(())
    /// # }
    /// ```
    pub fn index(self, i: usize) -> PPtr<T> {
        assert!(i < N, "index {i} out of bounds for an array of {N}");
        PPtr::from_offset(self.offset + (i * std::mem::size_of::<T>()) as u64)
    }
}

/// A pointer to a field of a persistent object:
/// `pfield!(ptr, Type, field)` is a `PPtr<FieldType>` (e.g. to modify only that field with
/// [`Tx::get_mut`](crate::Tx::get_mut), which then locks and copies only the field's bytes).
///
/// ```
/// use pmstore_tx::{pfield, PPtr};
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Account { id: u64, balance: u64 }
/// let acct: PPtr<Account> = PPtr::from_offset(4096);
/// let balance: PPtr<u64> = pfield!(acct, Account, balance);
/// assert_eq!(balance.offset(), 4104);
/// ```
#[macro_export]
macro_rules! pfield {
    ($ptr:expr, $type:ty, $field:ident) => {{
        let p: $crate::PPtr<$type> = $ptr;
        p.project(::core::mem::offset_of!($type, $field), |t: &$type| {
            &t.$field
        })
    }};
}

impl<T> Clone for PPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PPtr<T> {}
impl<T> PartialEq for PPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for PPtr<T> {}
impl<T> PartialOrd for PPtr<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for PPtr<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.offset.cmp(&other.offset)
    }
}
impl<T> std::hash::Hash for PPtr<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.offset.hash(state);
    }
}
impl<T> Default for PPtr<T> {
    fn default() -> Self {
        PPtr::NULL
    }
}
impl<T> fmt::Debug for PPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PPtr({:#x})", self.offset)
    }
}

// SAFETY: a PPtr is one u64 (repr(transparent) over it; PhantomData is a ZST): the all-zero
// value is a valid PPtr (NULL).
unsafe impl<T: 'static> Zeroable for PPtr<T> {}
// SAFETY: as above, every bit pattern is a valid PPtr (any offset; validity is checked at use),
// there is no padding, and it is Copy + 'static.
unsafe impl<T: 'static> Pod for PPtr<T> {}

/// A persistent slice: `len` consecutive `T`s at a pool offset (16 bytes: offset, length in
/// elements). `Copy` and plain data like [`PPtr`]; dereferenced through a transaction
/// ([`Tx::get_slice`](crate::Tx::get_slice), [`Tx::get_slice_mut`](crate::Tx::get_slice_mut)),
/// which checks it. The empty slice is all zero ([`PSlice::EMPTY`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_tx::{CreateOptions, PSlice, Pool, TxError};
///
/// # let dir = tempfile::tempdir()?;
/// let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
/// let root = pool.root::<PSlice<u32>>()?;
/// pool.transaction(|tx| {
///     let s = tx.alloc_slice(&[1u32, 2, 3])?;
///     *tx.get_mut(root)? = s;
///     Ok::<_, TxError>(())
/// })?;
/// let sum: u32 = pool.read(|tx| {
///     let s = *tx.get(root)?;
///     Ok::<_, TxError>(tx.get_slice(s)?.iter().sum())
/// })?;
/// assert_eq!(sum, 6);
/// # Ok(())
/// # }
/// ```
#[repr(C)]
pub struct PSlice<T> {
    offset: u64,
    len: u64,
    _type: PhantomData<fn() -> T>,
}

const _: () = assert!(std::mem::size_of::<PSlice<u64>>() == 16);

impl<T> PSlice<T> {
    /// The empty slice.
    pub const EMPTY: PSlice<T> = PSlice::from_raw_parts(0, 0);

    /// The slice of `len` elements at pool offset `offset` (not checked until it is used).
    ///
    /// ```
    /// use pmstore_tx::PSlice;
    ///
    /// let s: PSlice<u64> = PSlice::from_raw_parts(4096, 10);
    /// assert_eq!((s.offset(), s.len()), (4096, 10));
    /// assert_eq!(PSlice::<u64>::from_raw_parts(0, 0), PSlice::EMPTY);
    /// ```
    pub const fn from_raw_parts(offset: u64, len: u64) -> PSlice<T> {
        PSlice {
            offset,
            len,
            _type: PhantomData,
        }
    }

    /// Pool offset of the first element.
    ///
    /// ```
    /// use pmstore_tx::PSlice;
    ///
    /// let s: PSlice<u16> = PSlice::from_raw_parts(8192, 4);
    /// assert_eq!(s.offset(), 8192);
    /// assert_eq!(s.offset(), s.as_ptr().offset());
    /// ```
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Number of elements.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice_zeroed::<u64>(100))?;
    /// assert_eq!(s.len(), 100); // elements, not bytes
    /// # Ok(())
    /// # }
    /// ```
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether it has no elements.
    ///
    /// ```
    /// use pmstore_tx::PSlice;
    ///
    /// assert!(PSlice::<u8>::EMPTY.is_empty());
    /// assert!(!PSlice::<u8>::from_raw_parts(4096, 1).is_empty());
    /// ```
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// A pointer to its first element (the block to free).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice(&[7u64, 8]))?;
    /// let first = pool.read(|tx| Ok::<_, TxError>(*tx.get(s.as_ptr())?))?;
    /// assert_eq!(first, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub const fn as_ptr(self) -> PPtr<T> {
        PPtr::from_offset(self.offset)
    }

    /// A pointer to element `i`.
    ///
    /// # Panics
    /// If `i >= len`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_tx::{CreateOptions, Pool, TxError};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(dir.path().join("doc.pool"), &CreateOptions::new("doc", 8 << 20))?;
    /// let s = pool.transaction(|tx| tx.alloc_slice(&[10u32, 20, 30]))?;
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(s.at(1))? += 1;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// let v = pool.read(|tx| Ok::<_, TxError>(tx.get_slice(s)?.to_vec()))?;
    /// assert_eq!(v, [10, 21, 30]);
    /// assert_eq!(s.at(2).offset(), s.offset() + 8);
    /// # Ok(())
    /// # }
    /// ```
    pub fn at(self, i: u64) -> PPtr<T> {
        assert!(
            i < self.len,
            "index {i} out of bounds for a slice of {}",
            self.len
        );
        PPtr::from_offset(self.offset + i * std::mem::size_of::<T>() as u64)
    }
}

impl<T> Clone for PSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PSlice<T> {}
impl<T> PartialEq for PSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.offset, self.len) == (other.offset, other.len)
    }
}
impl<T> Eq for PSlice<T> {}
impl<T> Default for PSlice<T> {
    fn default() -> Self {
        PSlice::EMPTY
    }
}
impl<T> fmt::Debug for PSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PSlice({:#x}, {})", self.offset, self.len)
    }
}
// SAFETY: two u64s (repr(C), no padding; PhantomData is a ZST): every bit pattern is a valid
// PSlice (validity is checked at use), zero is EMPTY; Copy + 'static.
unsafe impl<T: 'static> Zeroable for PSlice<T> {}
// SAFETY: as above.
unsafe impl<T: 'static> Pod for PSlice<T> {}

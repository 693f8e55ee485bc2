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
    pub const fn from_offset(offset: u64) -> PPtr<T> {
        PPtr {
            offset,
            _type: PhantomData,
        }
    }

    /// The object's offset in the pool.
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Whether this is [`PPtr::NULL`].
    pub const fn is_null(self) -> bool {
        self.offset == 0
    }

    /// The same offset, viewed as another type.
    pub const fn cast<U>(self) -> PPtr<U> {
        PPtr::from_offset(self.offset)
    }

    /// A pointer to a field of the object, `offset` bytes in, with the field's type taken from
    /// `field` (an accessor such as `|t: &T| &t.x`); use [`pfield!`](crate::pfield) instead of
    /// calling this directly.
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
    pub fn index(self, i: usize) -> PPtr<T> {
        assert!(i < N, "index {i} out of bounds for an array of {N}");
        PPtr::from_offset(self.offset + (i * std::mem::size_of::<T>()) as u64)
    }
}

/// A pointer to a field of a persistent object:
/// `pfield!(ptr, Type, field)` is a `PPtr<FieldType>` (e.g. to modify only that field with
/// [`Tx::get_mut`](crate::Tx::get_mut), which then logs only the field).
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
    pub const fn from_raw_parts(offset: u64, len: u64) -> PSlice<T> {
        PSlice {
            offset,
            len,
            _type: PhantomData,
        }
    }

    /// Pool offset of the first element.
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether it has no elements.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// A pointer to its first element (the block to free).
    pub const fn as_ptr(self) -> PPtr<T> {
        PPtr::from_offset(self.offset)
    }

    /// A pointer to element `i`.
    ///
    /// # Panics
    /// If `i >= len`.
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

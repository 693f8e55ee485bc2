//! The pool header: the first 4 KiB page of every pool file (format v1, see `docs/FORMAT.md`).
//!
//! The header is written once, at creation, and never modified afterwards: every later layer
//! keeps its mutable state in the regions the header describes. That makes the header's
//! checksum always valid on a healthy pool and lets `open` validate it without a log.

use std::mem::{offset_of, size_of};
use std::path::Path;

use bytemuck::{Pod, Zeroable};

use crate::error::{PoolError, Result};

#[cfg(not(target_endian = "little"))]
compile_error!(
    "pmstore's on-media structs are little-endian and mapped directly: little-endian targets only"
);

/// Size of the header page. The header occupies the whole first page of the pool.
pub const HEADER_SIZE: usize = 4096;
/// The pool magic: the first eight bytes of every pmstore pool.
pub const POOL_MAGIC: [u8; 8] = *b"PMSTPOOL";
/// Format major version written and read by this build. A reader refuses any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written by this build. Minor versions are backward and forward
/// compatible within a major version; readers accept any minor.
pub const FORMAT_MINOR: u16 = 0;
/// Longest layout name, in bytes.
pub const LAYOUT_NAME_MAX: usize = 64;
/// Granularity of every region offset and size, and of the pool size.
pub const PAGE: u64 = 4096;
/// Smallest pool `create` accepts.
pub const MIN_POOL_SIZE: u64 = 8 << 20;
/// Largest pool `create` accepts (16 TiB).
pub const MAX_POOL_SIZE: u64 = 16 << 40;
/// Granularity of the lane size.
pub const CACHE_LINE: u64 = 64;

/// Compatible feature bits known to this build. A reader ignores unknown compat bits.
pub const COMPAT_KNOWN: u64 = 0;
/// Incompatible feature bit 0: every lane holds two redo log regions (lane format 2,
/// `docs/REDO.md` §1). Set in every pool this build creates, so that builds that look for a
/// log only at a lane's start refuse the pool instead of missing a committed log.
pub const INCOMPAT_LANE_SLOTS: u64 = 1;
/// Incompatible feature bits known to this build. A reader refuses a pool with unknown bits.
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_LANE_SLOTS;
/// Read-only-compatible feature bits known to this build. A reader opens a pool with unknown
/// bits read-only only.
pub const RO_COMPAT_KNOWN: u64 = 0;

/// The on-media pool header, byte for byte (all integers little-endian).
///
/// This struct *is* the media format: it is read and written with `bytemuck`, and its field
/// offsets are asserted at compile time against `docs/FORMAT.md`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, FORMAT_MAJOR, HEADER_SIZE, MIN_POOL_SIZE, POOL_MAGIC};
///
/// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let h = pool.header();
/// assert_eq!((h.magic, h.major, h.header_size), (POOL_MAGIC, FORMAT_MAJOR, HEADER_SIZE as u32));
/// assert_eq!(h.layout_name(), "doc");
/// assert_eq!(h.as_bytes().len(), 4096);
/// # Ok(())
/// # }
/// ```
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PoolHeader {
    /// `b"PMSTPOOL"`.
    pub magic: [u8; 8],
    /// Format major version ([`FORMAT_MAJOR`]).
    pub major: u16,
    /// Format minor version ([`FORMAT_MINOR`]).
    pub minor: u16,
    /// Size of the header in bytes: always 4096.
    pub header_size: u32,
    /// Compatible feature flags.
    pub compat: u64,
    /// Incompatible feature flags.
    pub incompat: u64,
    /// Read-only-compatible feature flags.
    pub ro_compat: u64,
    /// Random (v4) UUID of this pool, never all zero.
    pub uuid: [u8; 16],
    /// Creation time, nanoseconds since the Unix epoch (UTC).
    pub created_unix_ns: u64,
    /// Total pool size in bytes: the file's length.
    pub pool_size: u64,
    /// Layout name, UTF-8, NUL-padded (no terminator when 64 bytes long).
    pub layout: [u8; LAYOUT_NAME_MAX],
    /// Where the root area, the lanes and the heap lie (bytes 136..184).
    pub geometry: Geometry,
    /// Must be zero.
    pub reserved: [u8; 3908],
    /// CRC-32C (Castagnoli) of bytes 0..4092 of the header.
    pub checksum: u32,
}

// The format contract (docs/FORMAT.md §2), checked at compile time.
const _: () = {
    assert!(size_of::<PoolHeader>() == HEADER_SIZE);
    assert!(offset_of!(PoolHeader, magic) == 0);
    assert!(offset_of!(PoolHeader, major) == 8);
    assert!(offset_of!(PoolHeader, minor) == 10);
    assert!(offset_of!(PoolHeader, header_size) == 12);
    assert!(offset_of!(PoolHeader, compat) == 16);
    assert!(offset_of!(PoolHeader, incompat) == 24);
    assert!(offset_of!(PoolHeader, ro_compat) == 32);
    assert!(offset_of!(PoolHeader, uuid) == 40);
    assert!(offset_of!(PoolHeader, created_unix_ns) == 56);
    assert!(offset_of!(PoolHeader, pool_size) == 64);
    assert!(offset_of!(PoolHeader, layout) == 72);
    assert!(offset_of!(PoolHeader, geometry) == 136);
    assert!(size_of::<Geometry>() == 48);
    assert!(136 + offset_of!(Geometry, root_offset) == 136);
    assert!(136 + offset_of!(Geometry, root_size) == 144);
    assert!(136 + offset_of!(Geometry, lanes_offset) == 152);
    assert!(136 + offset_of!(Geometry, lane_count) == 160);
    assert!(136 + offset_of!(Geometry, lane_size) == 164);
    assert!(136 + offset_of!(Geometry, heap_offset) == 168);
    assert!(136 + offset_of!(Geometry, heap_size) == 176);
    assert!(offset_of!(PoolHeader, reserved) == 184);
    assert!(offset_of!(PoolHeader, checksum) == CHECKSUM_OFFSET);
};

/// Offset of the checksum field; the checksum covers every byte before it.
pub const CHECKSUM_OFFSET: usize = 4092;

impl std::fmt::Debug for PoolHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHeader")
            .field("magic", &String::from_utf8_lossy(&self.magic))
            .field("major", &self.major)
            .field("minor", &self.minor)
            .field("compat", &self.compat)
            .field("incompat", &self.incompat)
            .field("ro_compat", &self.ro_compat)
            .field("uuid", &self.uuid())
            .field("created_unix_ns", &self.created_unix_ns)
            .field("pool_size", &self.pool_size)
            .field("layout", &self.layout_name())
            .field("geometry", &self.geometry())
            .field("checksum", &format_args!("{:#010x}", self.checksum))
            .finish()
    }
}

/// Where the regions owned by the upper layers lie, in pool offsets: stored as is in the
/// header (bytes 136..184).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{Geometry, MIN_POOL_SIZE};
///
/// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 8, 4096, 4096)?;
/// assert_eq!((g.root_offset, g.lanes_offset), (4096, 8192));
/// assert_eq!(g.heap_offset, 8192 + 8 * 4096);
/// assert_eq!(g.heap_offset + g.heap_size, MIN_POOL_SIZE);
/// # Ok(())
/// # }
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Geometry {
    /// Offset of the root area (always 4096).
    pub root_offset: u64,
    /// Size of the root area.
    pub root_size: u64,
    /// Offset of the lane area (just after the root area).
    pub lanes_offset: u64,
    /// Number of lanes.
    pub lane_count: u32,
    /// Size of one lane in bytes.
    pub lane_size: u32,
    /// Offset of the heap.
    pub heap_offset: u64,
    /// Size of the heap; the heap runs to the end of the pool.
    pub heap_size: u64,
}

impl Geometry {
    /// Offset of lane `i`'s first byte.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{Geometry, MIN_POOL_SIZE};
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 8, 4096, 4096)?;
    /// assert_eq!(g.lane_offset(0), g.lanes_offset);
    /// assert_eq!(g.lane_offset(3), g.lanes_offset + 3 * 4096);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lane_offset(&self, i: u32) -> u64 {
        assert!(i < self.lane_count, "lane {i} out of range");
        self.lanes_offset + u64::from(i) * u64::from(self.lane_size)
    }

    /// Lays out a pool of `pool_size` bytes: header, root area, lanes, then the heap, aligned to
    /// `heap_align` (a power of two, at least 4096) and running to the end of the pool.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{Geometry, PoolError, MIN_POOL_SIZE};
    ///
    /// let g = Geometry::plan(MIN_POOL_SIZE, 4096, 64, 16 << 10, 1 << 20)?;
    /// assert_eq!(g.heap_offset % (1 << 20), 0);
    /// let bad = Geometry::plan(MIN_POOL_SIZE, 4096, 64, 100, 4096); // lanes not a multiple of 64
    /// assert!(matches!(bad, Err(PoolError::InvalidGeometry(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn plan(
        pool_size: u64,
        root_size: u64,
        lane_count: u32,
        lane_size: u32,
        heap_align: u64,
    ) -> Result<Geometry> {
        let bad = |m: String| Err(PoolError::InvalidGeometry(m));
        if root_size == 0 || root_size % PAGE != 0 {
            return bad(format!(
                "root area size {root_size} is not a positive multiple of 4096"
            ));
        }
        if lane_count == 0 {
            return bad("lane count must be at least 1".into());
        }
        if lane_size == 0 || u64::from(lane_size) % CACHE_LINE != 0 {
            return bad(format!(
                "lane size {lane_size} is not a positive multiple of 64"
            ));
        }
        if heap_align < PAGE || !heap_align.is_power_of_two() {
            return bad(format!(
                "heap alignment {heap_align} is not a power of two >= 4096"
            ));
        }
        let root_offset = HEADER_SIZE as u64;
        let lanes_offset = root_offset.checked_add(root_size);
        let lanes_len = u64::from(lane_count) * u64::from(lane_size);
        let heap_offset = lanes_offset
            .and_then(|l| l.checked_add(lanes_len))
            .and_then(|end| end.checked_next_multiple_of(heap_align))
            .unwrap_or(u64::MAX);
        if heap_offset >= pool_size {
            return bad(format!(
                "root area of {root_size} bytes and {lane_count} lanes of {lane_size} bytes leave no heap in a pool of {pool_size} bytes"
            ));
        }
        Ok(Geometry {
            root_offset,
            root_size,
            lanes_offset: root_offset + root_size,
            lane_count,
            lane_size,
            heap_offset,
            heap_size: pool_size - heap_offset,
        })
    }
}

impl PoolHeader {
    /// Builds a complete, checksummed header for a new pool.
    pub(crate) fn new(
        pool_size: u64,
        layout: &str,
        geometry: Geometry,
        uuid: [u8; 16],
        created_unix_ns: u64,
    ) -> PoolHeader {
        let mut h = PoolHeader::zeroed();
        h.magic = POOL_MAGIC;
        h.major = FORMAT_MAJOR;
        h.minor = FORMAT_MINOR;
        h.header_size = HEADER_SIZE as u32;
        h.incompat = INCOMPAT_LANE_SLOTS;
        h.uuid = uuid;
        h.created_unix_ns = created_unix_ns;
        h.pool_size = pool_size;
        h.layout[..layout.len()].copy_from_slice(layout.as_bytes());
        h.geometry = geometry;
        h.checksum = h.compute_checksum();
        h
    }

    /// CRC-32C of the header bytes before the checksum field.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let mut h = *pool.header();
    /// assert_eq!(h.compute_checksum(), h.checksum);
    /// h.pool_size += 4096;
    /// assert_ne!(h.compute_checksum(), h.checksum);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compute_checksum(&self) -> u32 {
        crc32c::crc32c(&bytemuck::bytes_of(self)[..CHECKSUM_OFFSET])
    }

    /// The header as the 4096 bytes stored on media.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, CHECKSUM_OFFSET, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let h = pool.header();
    /// let bytes = h.as_bytes();
    /// assert_eq!(bytes[..8], *b"PMSTPOOL");
    /// assert_eq!(bytes[CHECKSUM_OFFSET..], h.checksum.to_le_bytes());
    /// let mut page = [0u8; 4096];
    /// // SAFETY: nothing writes the header page.
    /// unsafe { pool.read(0, &mut page) };
    /// assert_eq!(&page, bytes); // exactly what is stored
    /// # Ok(())
    /// # }
    /// ```
    pub fn as_bytes(&self) -> &[u8; HEADER_SIZE] {
        bytemuck::cast_ref(self)
    }

    /// The layout name (the bytes before the first NUL, lossily decoded).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("kv-store v2", MIN_POOL_SIZE))?;
    /// assert_eq!(pool.header().layout_name(), "kv-store v2");
    /// # Ok(())
    /// # }
    /// ```
    pub fn layout_name(&self) -> String {
        let end = self
            .layout
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(LAYOUT_NAME_MAX);
        String::from_utf8_lossy(&self.layout[..end]).into_owned()
    }

    /// The pool UUID in the canonical 8-4-4-4-12 form.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE);
    /// let ((a, _), (b, _)) = (Pool::create_simulated(&opts)?, Pool::create_simulated(&opts)?);
    /// assert_ne!(a.header().uuid(), b.header().uuid()); // random per pool
    /// assert_eq!(a.header().uuid().as_bytes(), &a.header().uuid);
    /// assert_eq!(a.header().uuid().to_string().len(), 36); // 8-4-4-4-12
    /// # Ok(())
    /// # }
    /// ```
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }

    /// The region geometry recorded in the header.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert_eq!(pool.header().geometry(), pool.geometry());
    /// assert_eq!(pool.header().geometry().lane_count, 64);
    /// # Ok(())
    /// # }
    /// ```
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Decodes and validates a header page read from `path` (the path only labels errors).
    ///
    /// The checks run in the order given in `docs/FORMAT.md` §2.3: zero page, magic, major
    /// version, checksum, feature flags, then every field. `writable` selects whether unknown
    /// read-only-compatible features are an error.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::path::Path;
    /// use pmstore_pool::{CreateOptions, Pool, PoolError, PoolHeader, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let mut page = *pool.header().as_bytes();
    /// let h = PoolHeader::validate(&page, Path::new("copy"), true)?;
    /// assert_eq!(h.uuid, pool.header().uuid);
    /// page[100] ^= 1; // a flipped bit in the layout name
    /// let err = PoolHeader::validate(&page, Path::new("copy"), true).unwrap_err();
    /// assert!(matches!(err, PoolError::ChecksumMismatch { .. }));
    /// assert!(matches!(
    ///     PoolHeader::validate(&[0; 4096], Path::new("new"), true),
    ///     Err(PoolError::Incomplete { .. }) // a crash during create
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn validate(page: &[u8; HEADER_SIZE], path: &Path, writable: bool) -> Result<PoolHeader> {
        let path_buf = || path.to_path_buf();
        if page.iter().all(|&b| b == 0) {
            return Err(PoolError::Incomplete { path: path_buf() });
        }
        let h: PoolHeader = bytemuck::pod_read_unaligned(page);
        if h.magic != POOL_MAGIC {
            return Err(PoolError::BadMagic {
                path: path_buf(),
                found: h.magic,
            });
        }
        // The version is checked before the checksum: a future major version may checksum
        // (or lay out) its header differently, and must be reported as such.
        if h.major != FORMAT_MAJOR {
            return Err(PoolError::UnsupportedVersion {
                path: path_buf(),
                found: h.major,
                supported: FORMAT_MAJOR,
            });
        }
        let computed = h.compute_checksum();
        if computed != h.checksum {
            return Err(PoolError::ChecksumMismatch {
                path: path_buf(),
                stored: h.checksum,
                computed,
            });
        }
        let unknown = h.incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(PoolError::UnsupportedIncompatFeatures {
                path: path_buf(),
                unknown,
            });
        }
        let unknown = h.ro_compat & !RO_COMPAT_KNOWN;
        if writable && unknown != 0 {
            return Err(PoolError::UnsupportedRoCompatFeatures {
                path: path_buf(),
                unknown,
            });
        }
        if let Err(what) = h.check_fields() {
            return Err(PoolError::InvalidHeader {
                path: path_buf(),
                what,
            });
        }
        Ok(h)
    }

    /// Field-by-field checks of a header whose checksum matched.
    fn check_fields(&self) -> std::result::Result<(), String> {
        if self.header_size as usize != HEADER_SIZE {
            return Err(format!(
                "header_size is {}, expected 4096",
                self.header_size
            ));
        }
        if self.uuid == [0; 16] {
            return Err("uuid is all zero".into());
        }
        let size = self.pool_size;
        if !(MIN_POOL_SIZE..=MAX_POOL_SIZE).contains(&size) || size % PAGE != 0 {
            return Err(format!(
                "pool_size {size} is out of range or not page-aligned"
            ));
        }
        validate_layout_bytes(&self.layout)?;
        let g = self.geometry();
        let expect = Geometry::plan(size, g.root_size, g.lane_count, g.lane_size, PAGE)
            .map_err(|e| e.to_string())?;
        if g.root_offset != expect.root_offset || g.lanes_offset != expect.lanes_offset {
            return Err(format!(
                "regions out of place: root at {}, lanes at {} (expected {} and {})",
                g.root_offset, g.lanes_offset, expect.root_offset, expect.lanes_offset
            ));
        }
        // The heap may start later than the first page after the lanes (a larger alignment
        // was requested at creation), but must be page-aligned and run to the end.
        if g.heap_offset < expect.heap_offset
            || g.heap_offset % PAGE != 0
            || g.heap_offset.checked_add(g.heap_size) != Some(size)
            || g.heap_size == 0
        {
            return Err(format!(
                "heap [{}, +{}) does not start page-aligned after the lanes ({}) and run to the pool's end ({size})",
                g.heap_offset, g.heap_size, expect.heap_offset
            ));
        }
        if let Some(i) = self.reserved.iter().position(|&b| b != 0) {
            return Err(format!(
                "reserved byte at header offset {} is not zero",
                offset_of!(PoolHeader, reserved) + i
            ));
        }
        Ok(())
    }
}

/// Checks a layout name given by an application: 1 to 64 bytes of UTF-8 without NUL.
pub(crate) fn validate_layout_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > LAYOUT_NAME_MAX {
        Some("longer than 64 bytes")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PoolError::InvalidLayoutName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks the stored layout field: non-empty UTF-8, NUL padding only after the name.
fn validate_layout_bytes(field: &[u8; LAYOUT_NAME_MAX]) -> std::result::Result<(), String> {
    let end = field
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(LAYOUT_NAME_MAX);
    if end == 0 {
        return Err("layout name is empty".into());
    }
    if field[end..].iter().any(|&b| b != 0) {
        return Err("layout name padding is not all zero".into());
    }
    std::str::from_utf8(&field[..end]).map_err(|_| "layout name is not UTF-8".to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PoolHeader {
        let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 1024, PAGE).unwrap();
        PoolHeader::new(MIN_POOL_SIZE, "test", g, [7; 16], 1)
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        let back = PoolHeader::validate(h.as_bytes(), Path::new("x"), true).unwrap();
        assert_eq!(back.as_bytes(), h.as_bytes());
        assert_eq!(back.layout_name(), "test");
        assert_eq!(back.geometry().heap_offset, 4096 + 4096 + 4096);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let h = sample();
        for i in 0..HEADER_SIZE {
            for bit in [0x01u8, 0x80] {
                let mut page = *h.as_bytes();
                page[i] ^= bit;
                assert!(
                    PoolHeader::validate(&page, Path::new("x"), true).is_err(),
                    "flip of bit {bit:#x} at byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn ro_compat_only_blocks_writers() {
        let mut h = sample();
        h.ro_compat = 1 << 63;
        h.checksum = h.compute_checksum();
        let e = PoolHeader::validate(h.as_bytes(), Path::new("x"), true).unwrap_err();
        assert!(
            matches!(e, PoolError::UnsupportedRoCompatFeatures { unknown, .. } if unknown == 1 << 63)
        );
        assert!(PoolHeader::validate(h.as_bytes(), Path::new("x"), false).is_ok());
    }

    #[test]
    fn unknown_compat_bits_are_ignored() {
        let mut h = sample();
        h.compat = 0xff;
        h.checksum = h.compute_checksum();
        assert!(PoolHeader::validate(h.as_bytes(), Path::new("x"), true).is_ok());
    }

    #[test]
    fn layout_names() {
        assert!(validate_layout_name("").is_err());
        assert!(validate_layout_name(&"x".repeat(65)).is_err());
        assert!(validate_layout_name("a\0b").is_err());
        assert!(validate_layout_name(&"x".repeat(64)).is_ok());
        let g = Geometry::plan(MIN_POOL_SIZE, 4096, 4, 1024, PAGE).unwrap();
        let h = PoolHeader::new(MIN_POOL_SIZE, &"y".repeat(64), g, [1; 16], 0);
        let back = PoolHeader::validate(h.as_bytes(), Path::new("x"), true).unwrap();
        assert_eq!(back.layout_name(), "y".repeat(64));
    }

    #[test]
    fn geometry_rejects_what_does_not_fit() {
        assert!(Geometry::plan(MIN_POOL_SIZE, 0, 1, 64, PAGE).is_err());
        assert!(Geometry::plan(MIN_POOL_SIZE, 4096, 0, 64, PAGE).is_err());
        assert!(Geometry::plan(MIN_POOL_SIZE, 4096, 1, 100, PAGE).is_err());
        assert!(Geometry::plan(MIN_POOL_SIZE, 4096, 1, 64, 3000).is_err());
        assert!(Geometry::plan(MIN_POOL_SIZE, 4096, 1024, 8192, PAGE).is_err());
        let g = Geometry::plan(MIN_POOL_SIZE, 4096, 3, 64, 1 << 20).unwrap();
        assert_eq!(g.heap_offset, 1 << 20);
        assert_eq!(g.heap_offset + g.heap_size, MIN_POOL_SIZE);
        assert_eq!(g.lane_offset(2), 8192 + 128);
    }
}

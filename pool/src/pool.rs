//! [`Pool`]: an open, locked, validated and mapped pool file.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{PoolError, Result};
use crate::file;
use crate::header::{
    validate_layout_name, Geometry, PoolHeader, HEADER_SIZE, MAX_POOL_SIZE, MIN_POOL_SIZE, PAGE,
};
use crate::persist::{
    Backend, CounterRegistry, FlushContext, ModeRequest, PersistCounters, PersistMode, DRAINS,
    LINES, MSYNC_BYTES, MSYNC_CALLS, NT_BYTES,
};
use crate::raw::cpu::{self, FlushInstr};
use crate::raw::mapping::{self, Mapping};
use crate::sim::{SimDomain, LINE};

/// Copies of at least this many bytes use non-temporal stores (as PMDK's default threshold).
pub const NT_THRESHOLD: usize = 256;

/// In msync mode, a drain joins runs of dirty pages separated by at most this many clean
/// pages (1 MiB) into one `msync` call: each `msync(MS_SYNC)` costs a whole `fsync` of the
/// range (~90 µs here) while the clean pages it also covers cost almost nothing (the kernel
/// writes back only dirty pages), so one call over a short gap is much cheaper than two.
/// Pages further apart are synced by separate calls (a drain never syncs the whole file).
pub const MSYNC_MERGE_GAP_PAGES: u64 = 256;

/// Parameters of a new pool. Start from [`CreateOptions::new`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let opts = CreateOptions::new("my-app", MIN_POOL_SIZE)
///     .lanes(16, 8 << 10)
///     .mode(ModeRequest::Msync);
/// let pool = Pool::create(dir.path().join("app.pool"), &opts)?;
/// assert_eq!(pool.geometry().lane_count, 16);
/// assert_eq!(pool.header().layout_name(), "my-app");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Total size of the pool file in bytes: a multiple of 4096 in
    /// [`MIN_POOL_SIZE`]..=[`MAX_POOL_SIZE`].
    pub size: u64,
    /// The application's name for its data layout, 1 to 64 bytes of UTF-8 without NUL.
    pub layout: String,
    /// Size of the root area (a positive multiple of 4096).
    pub root_size: u64,
    /// Number of lanes (per-thread log areas).
    pub lane_count: u32,
    /// Size of one lane (a positive multiple of 64).
    pub lane_size: u32,
    /// Alignment of the heap's start, in pool offsets (a power of two, at least 4096).
    pub heap_align: u64,
    /// Allocate every block of the file at creation (default `true`). A sparse pool
    /// (`false`) saves space up front, but a store to a hole on a full file system is a
    /// SIGBUS instead of an error, so keep the default unless you know the file system.
    pub preallocate: bool,
    /// Persistence mode to map the new pool with.
    pub mode: ModeRequest,
}

impl CreateOptions {
    /// Default geometry (4 KiB root area, 64 lanes of 16 KiB, 4 KiB heap alignment),
    /// preallocated, automatic mode.
    ///
    /// ```
    /// use pmstore_pool::{CreateOptions, ModeRequest};
    ///
    /// let opts = CreateOptions::new("my-app", 8 << 20);
    /// assert_eq!((opts.size, opts.layout.as_str()), (8 << 20, "my-app"));
    /// assert_eq!((opts.lane_count, opts.lane_size, opts.root_size), (64, 16 << 10, 4096));
    /// assert!(opts.preallocate);
    /// assert_eq!(opts.mode, ModeRequest::Auto);
    /// ```
    pub fn new(layout: impl Into<String>, size: u64) -> CreateOptions {
        CreateOptions {
            size,
            layout: layout.into(),
            root_size: PAGE,
            lane_count: 64,
            lane_size: 16 << 10,
            heap_align: PAGE,
            preallocate: true,
            mode: ModeRequest::Auto,
        }
    }

    /// Sets the lane geometry.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).lanes(4, 4096))?;
    /// let g = pool.geometry();
    /// assert_eq!((g.lane_count, g.lane_size), (4, 4096));
    /// # Ok(())
    /// # }
    /// ```
    pub fn lanes(mut self, count: u32, size: u32) -> Self {
        self.lane_count = count;
        self.lane_size = size;
        self
    }

    /// Sets the root area's size.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, PoolError, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).root_size(8192))?;
    /// assert_eq!(pool.geometry().root_size, 8192);
    /// let bad = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).root_size(100));
    /// assert!(matches!(bad, Err(PoolError::InvalidGeometry(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn root_size(mut self, size: u64) -> Self {
        self.root_size = size;
        self
    }

    /// Sets the heap's alignment.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE).heap_align(2 << 20))?;
    /// assert_eq!(pool.geometry().heap_offset % (2 << 20), 0); // e.g. for huge pages
    /// # Ok(())
    /// # }
    /// ```
    pub fn heap_align(mut self, align: u64) -> Self {
        self.heap_align = align;
        self
    }

    /// Sets whether to preallocate every block.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// // A sparse file: quick to create, but a store to a hole on a full file system is a SIGBUS.
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).preallocate(false);
    /// let pool = Pool::create(dir.path().join("sparse.pool"), &opts)?;
    /// assert_eq!(std::fs::metadata(pool.path())?.len(), MIN_POOL_SIZE);
    /// # Ok(())
    /// # }
    /// ```
    pub fn preallocate(mut self, yes: bool) -> Self {
        self.preallocate = yes;
        self
    }

    /// Sets the persistence mode request.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, PersistMode, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Msync);
    /// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
    /// assert_eq!(pool.persistence(), PersistMode::Msync); // msync even on a DAX file system
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(mut self, mode: ModeRequest) -> Self {
        self.mode = mode;
        self
    }

    /// Checks the layout name, the size and the geometry, touching nothing.
    fn validate(&self) -> Result<Geometry> {
        validate_layout_name(&self.layout)?;
        if self.size < MIN_POOL_SIZE {
            return Err(PoolError::SizeTooSmall {
                size: self.size,
                min: MIN_POOL_SIZE,
            });
        }
        if self.size > MAX_POOL_SIZE {
            return Err(PoolError::SizeTooLarge {
                size: self.size,
                max: MAX_POOL_SIZE,
            });
        }
        if self.size % PAGE != 0 {
            return Err(PoolError::SizeNotAligned {
                size: self.size,
                align: PAGE,
            });
        }
        Geometry::plan(
            self.size,
            self.root_size,
            self.lane_count,
            self.lane_size,
            self.heap_align,
        )
    }

    /// A complete, checksummed header for a pool made with these options.
    fn header(&self, geometry: Geometry) -> PoolHeader {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        PoolHeader::new(
            self.size,
            &self.layout,
            geometry,
            *uuid::Uuid::new_v4().as_bytes(),
            created,
        )
    }
}

/// How to open an existing pool. The default opens read-write, checks no layout, auto mode.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("p.pool");
/// drop(Pool::create(&path, &CreateOptions::new("my-app", MIN_POOL_SIZE))?);
/// let pool = Pool::open(&path, &OpenOptions::new("my-app"))?;
/// assert!(!pool.is_read_only());
/// drop(pool);
/// let err = Pool::open(&path, &OpenOptions::new("other-app")).unwrap_err();
/// assert!(matches!(err, PoolError::LayoutMismatch { .. }));
/// // The default accepts any layout.
/// assert!(Pool::open(&path, &OpenOptions::default()).is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The layout name the pool must have; `None` accepts any.
    pub layout: Option<String>,
    /// Open for inspection only: a read-only mapping and a shared lock (other read-only
    /// openers may coexist; a writer may not).
    pub read_only: bool,
    /// Persistence mode request.
    pub mode: ModeRequest,
}

impl OpenOptions {
    /// Read-write, expecting `layout`.
    ///
    /// ```
    /// use pmstore_pool::{ModeRequest, OpenOptions};
    ///
    /// let opts = OpenOptions::new("my-app");
    /// assert_eq!(opts.layout.as_deref(), Some("my-app"));
    /// assert!(!opts.read_only);
    /// assert_eq!(opts.mode, ModeRequest::Auto);
    /// ```
    pub fn new(layout: impl Into<String>) -> OpenOptions {
        OpenOptions {
            layout: Some(layout.into()),
            ..OpenOptions::default()
        }
    }

    /// Read-only (see [`OpenOptions::read_only`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// drop(Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?);
    /// let ro = OpenOptions::new("doc").read_only(true);
    /// let a = Pool::open(&path, &ro)?;
    /// let b = Pool::open(&path, &ro)?; // readers share the lock
    /// assert!(a.is_read_only() && b.is_read_only());
    /// let w = Pool::open(&path, &OpenOptions::new("doc")); // a writer may not join
    /// assert!(matches!(w, Err(PoolError::Locked { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Sets the persistence mode request.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, OpenOptions, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// drop(Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?);
    /// let pool = Pool::open(&path, &OpenOptions::new("doc").mode(ModeRequest::Flush))?;
    /// assert!(pool.persistence().uses_cache_flush()); // map-sync on DAX, forced-flush elsewhere
    /// assert!(pool.flush_instr().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(mut self, mode: ModeRequest) -> Self {
        self.mode = mode;
        self
    }
}

/// What [`Pool::inspect`] learns about a pool file without locking or mapping it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Inspection, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("p.pool");
/// let pool = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let info: Inspection = Pool::inspect(&path, Some("doc"))?;
/// assert!(info.locked); // `pool` holds it open read-write
/// assert_eq!(info.file_len, MIN_POOL_SIZE);
/// assert_eq!(info.header.uuid, pool.header().uuid);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The validated header.
    pub header: PoolHeader,
    /// The file's length (validation guarantees it equals `header.pool_size`).
    pub file_len: u64,
    /// Whether another handle holds the pool open read-write right now.
    pub locked: bool,
    /// The persistence mode a read-write open would use now (with the current environment).
    pub mode: PersistMode,
}

/// The memory behind a pool.
enum Memory {
    /// A mapped pool file; the file holds the flock for as long as the pool is open.
    File { map: Mapping, _file: File },
    /// Working memory of a simulated persistence domain.
    Sim(Arc<SimDomain>),
}

impl Memory {
    #[inline]
    fn ptr(&self) -> NonNull<u8> {
        match self {
            Memory::File { map, .. } => map.ptr(),
            Memory::Sim(sim) => sim.working_ptr(),
        }
    }
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// An open pool: the file (locked), its validated header, and a shared mapping of it.
///
/// The pool layer hands out addresses and bounds-checked offsets; what may be stored where is
/// the business of the layers above (allocator, transactions), whose safe APIs uphold the
/// contracts of the `unsafe` accessors here.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("p.pool");
/// let pool = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().root_offset;
/// let mut ctx = pool.flush_context();
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.copy_persist(&mut ctx, off, b"persistent")? };
/// drop(pool);
///
/// let pool = Pool::open(&path, &OpenOptions::new("doc"))?;
/// let mut buf = [0u8; 10];
/// // SAFETY: as above.
/// unsafe { pool.read(off, &mut buf) };
/// assert_eq!(&buf, b"persistent");
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    mem: Memory,
    /// `header.pool_size`, kept beside the mapping for the bounds checks on the hot path.
    len: u64,
    path: PathBuf,
    header: Box<PoolHeader>,
    mode: PersistMode,
    backend: Backend,
    read_only: bool,
    id: u64,
    poisoned: AtomicBool,
    counters: CounterRegistry,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("path", &self.path)
            .field("size", &self.header.pool_size)
            .field("layout", &self.header.layout_name())
            .field("mode", &self.mode)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Creates a new pool file at `path` and opens it read-write.
    ///
    /// Refuses an existing path. Allocates every block (`posix_fallocate`), `fsync`s, then
    /// writes the header and `fsync`s the file and its directory, so a crash at any point
    /// leaves either no file, or a file that [`Pool::open`] rejects with
    /// [`PoolError::Incomplete`], or a complete pool. On failure the partial file is removed.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, PoolError, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// let pool = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert_eq!(pool.size(), MIN_POOL_SIZE);
    /// let again = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE));
    /// assert!(matches!(again, Err(PoolError::AlreadyExists { .. })));
    /// let small = Pool::create(dir.path().join("small.pool"), &CreateOptions::new("doc", 4096));
    /// assert!(matches!(small, Err(PoolError::SizeTooSmall { size: 4096, .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Pool> {
        let path = path.as_ref();
        let geometry = opts.validate()?;
        let mode = opts.mode.resolve()?;

        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| PoolError::from_open(path, "create", e))?;
        let mut guard = RemoveOnDrop(Some(path));
        if !file::try_lock(&file, true).map_err(|e| PoolError::io(path, "flock", e))? {
            // Someone opened our new, still empty file and holds it: it is ours to remove.
            return Err(PoolError::Locked { path: path.into() });
        }
        if opts.preallocate {
            file::preallocate(&file, opts.size).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC) => PoolError::NoSpace {
                    path: path.into(),
                    size: opts.size,
                },
                _ => PoolError::io(path, "posix_fallocate", e),
            })?;
        } else {
            file.set_len(opts.size)
                .map_err(|e| PoolError::io(path, "ftruncate", e))?;
        }
        // The allocation must be durable before the header that makes the pool valid.
        file.sync_all()
            .map_err(|e| PoolError::io(path, "fsync", e))?;
        let header = opts.header(geometry);
        file.write_all_at(header.as_bytes(), 0)
            .map_err(|e| PoolError::io(path, "write header", e))?;
        file.sync_all()
            .map_err(|e| PoolError::io(path, "fsync", e))?;
        file::sync_parent_dir(path).map_err(|e| PoolError::io(path, "fsync directory", e))?;
        let pool = Pool::map_validated(file, path, header, false, mode)?;
        guard.0 = None;
        Ok(pool)
    }

    /// Opens an existing pool: locks it (exclusively, or shared when read-only), validates the
    /// header and the file's size, checks the layout name if one is given, and maps it.
    /// Every failure is a distinct [`PoolError`], and the file is never modified.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// let created = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let busy = Pool::open(&path, &OpenOptions::new("doc"));
    /// assert!(matches!(busy, Err(PoolError::Locked { .. }))); // one writer at a time
    /// let uuid = created.header().uuid;
    /// drop(created);
    /// let pool = Pool::open(&path, &OpenOptions::new("doc"))?;
    /// assert_eq!(pool.header().uuid, uuid);
    /// let missing = Pool::open(dir.path().join("nope"), &OpenOptions::new("doc"));
    /// assert!(matches!(missing, Err(PoolError::NotFound { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Pool> {
        let path = path.as_ref();
        let mode = opts.mode.resolve()?;
        let file = open_file(path, !opts.read_only)?;
        if !file::try_lock(&file, !opts.read_only).map_err(|e| PoolError::io(path, "flock", e))? {
            return Err(PoolError::Locked { path: path.into() });
        }
        let header = read_header(&file, path, !opts.read_only, opts.layout.as_deref())?;
        Pool::map_validated(file, path, header, opts.read_only, mode)
    }

    /// Creates a pool in the simulated persistence domain (heap memory, no file): its
    /// creation is durable at once (working memory and media both hold the new pool). The pool
    /// runs the flush-mode code; see [`crate::sim`] for the model and crash exploration.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, PersistMode, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert_eq!(pool.persistence(), PersistMode::Simulated);
    /// assert_eq!(sim.media_image().len() as u64, MIN_POOL_SIZE); // durable at once
    /// # Ok(())
    /// # }
    /// ```
    pub fn create_simulated(opts: &CreateOptions) -> Result<(Pool, Arc<SimDomain>)> {
        let geometry = opts.validate()?;
        let mut image = vec![0u8; opts.size as usize];
        image[..HEADER_SIZE].copy_from_slice(opts.header(geometry).as_bytes());
        Pool::open_simulated(&image, &OpenOptions::default())
    }

    /// Opens a pool image (e.g. a crash image from [`crate::sim::CrashPoint::images`]) in a new
    /// simulated persistence domain whose working memory and media both hold `image`. Validates
    /// the header exactly as [`Pool::open`] does (`docs/FORMAT.md` §2.3 steps 5–16).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, OpenOptions, Pool, PoolError, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.copy_persist(&mut ctx, off, &[1; 8])? };
    /// // "Power cut": reopen what the media holds.
    /// let (after, _) = Pool::open_simulated(&sim.media_image(), &OpenOptions::new("doc"))?;
    /// let mut b = [0u8; 8];
    /// // SAFETY: nothing else uses `after`.
    /// unsafe { after.read(off, &mut b) };
    /// assert_eq!(b, [1; 8]);
    /// let bad = Pool::open_simulated(&[0; 4096], &OpenOptions::new("doc"));
    /// assert!(bad.unwrap_err().is_invalid_pool());
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_simulated(image: &[u8], opts: &OpenOptions) -> Result<(Pool, Arc<SimDomain>)> {
        let path = Path::new("<simulated>");
        let mut page = [0u8; HEADER_SIZE];
        if image.len() >= HEADER_SIZE {
            page.copy_from_slice(&image[..HEADER_SIZE]);
        }
        let header = check_header(
            &page,
            image.len() as u64,
            path,
            !opts.read_only,
            opts.layout.as_deref(),
        )?;
        let sim = Arc::new(SimDomain::from_image(image));
        let pool = Pool {
            mem: Memory::Sim(Arc::clone(&sim)),
            len: header.pool_size,
            path: path.to_path_buf(),
            header: Box::new(header),
            mode: PersistMode::Simulated,
            backend: Backend::Sim,
            read_only: opts.read_only,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            poisoned: AtomicBool::new(false),
            counters: CounterRegistry::default(),
        };
        Ok((pool, sim))
    }

    /// Reads and validates a pool's header without locking or mapping it (for `pmstore info`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, PoolError, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// drop(Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?);
    /// let info = Pool::inspect(&path, None)?;
    /// assert!(!info.locked);
    /// assert_eq!(info.header.layout_name(), "doc");
    /// let wrong = Pool::inspect(&path, Some("other"));
    /// assert!(matches!(wrong, Err(PoolError::LayoutMismatch { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn inspect(path: impl AsRef<Path>, layout: Option<&str>) -> Result<Inspection> {
        let path = path.as_ref();
        let request = ModeRequest::Auto.resolve()?;
        let file = open_file(path, false)?;
        let header = read_header(&file, path, false, layout)?;
        let locked = !file::try_lock(&file, false).map_err(|e| PoolError::io(path, "flock", e))?;
        if !locked {
            file::unlock(&file);
        }
        let sync = request != ModeRequest::Msync && mapping::probe_sync(file.as_fd());
        let mode = match request {
            _ if sync => PersistMode::MapSync,
            ModeRequest::Flush => PersistMode::ForcedFlush,
            _ => PersistMode::Msync,
        };
        Ok(Inspection {
            header,
            file_len: header.pool_size,
            locked,
            mode,
        })
    }

    fn map_validated(
        file: File,
        path: &Path,
        header: PoolHeader,
        read_only: bool,
        request: ModeRequest,
    ) -> Result<Pool> {
        let len = usize::try_from(header.pool_size).expect("pool size fits the address space");
        let map_err = |e| PoolError::io(path, "mmap", e);
        let (map, mode) = match request {
            ModeRequest::Msync => (
                Mapping::map(file.as_fd(), len, !read_only, false).map_err(map_err)?,
                PersistMode::Msync,
            ),
            ModeRequest::Auto | ModeRequest::Flush => {
                match Mapping::map(file.as_fd(), len, !read_only, true) {
                    Ok(m) => (m, PersistMode::MapSync),
                    Err(e) if mapping::is_sync_unsupported(&e) => {
                        let m =
                            Mapping::map(file.as_fd(), len, !read_only, false).map_err(map_err)?;
                        let mode = if request == ModeRequest::Flush {
                            PersistMode::ForcedFlush
                        } else {
                            PersistMode::Msync
                        };
                        (m, mode)
                    }
                    Err(e) => return Err(map_err(e)),
                }
            }
        };
        let backend = if mode.uses_cache_flush() {
            Backend::Flush {
                instr: FlushInstr::detect(),
                avx: cpu::has_avx(),
            }
        } else {
            Backend::Msync {
                page: system_page_size(),
            }
        };
        Ok(Pool {
            mem: Memory::File { map, _file: file },
            len: header.pool_size,
            path: path.to_path_buf(),
            header: Box::new(header),
            mode,
            backend,
            read_only,
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            poisoned: AtomicBool::new(false),
            counters: CounterRegistry::default(),
        })
    }

    /// The path the pool was opened at.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("p.pool");
    /// let pool = Pool::create(&path, &CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert_eq!(pool.path(), path);
    /// # Ok(())
    /// # }
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pool's (validated, immutable) header.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE, POOL_MAGIC};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let h = pool.header();
    /// assert_eq!(h.magic, POOL_MAGIC);
    /// assert_eq!(h.pool_size, MIN_POOL_SIZE);
    /// assert_eq!(h.checksum, h.compute_checksum());
    /// # Ok(())
    /// # }
    /// ```
    pub fn header(&self) -> &PoolHeader {
        &self.header
    }

    /// Where the root area, lanes and heap lie.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, HEADER_SIZE, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let g = pool.geometry();
    /// assert_eq!(g.root_offset, HEADER_SIZE as u64);
    /// assert_eq!(g.lanes_offset, g.root_offset + g.root_size);
    /// assert_eq!(g.heap_offset + g.heap_size, pool.size()); // the heap runs to the end
    /// # Ok(())
    /// # }
    /// ```
    pub fn geometry(&self) -> Geometry {
        self.header.geometry()
    }

    /// Total size of the pool in bytes.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", 16 << 20))?;
    /// assert_eq!(pool.size(), 16 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn size(&self) -> u64 {
        self.header.pool_size
    }

    /// How stores are made durable in this pool.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let pool = Pool::create(dir.path().join("p.pool"), &CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let mode = pool.persistence(); // map-sync on DAX, msync elsewhere (unless PMSTORE_FORCE_MODE)
    /// assert!(["map-sync", "forced-flush", "msync"].contains(&mode.name()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn persistence(&self) -> PersistMode {
        self.mode
    }

    /// The cache-flush instruction in use (flush modes only).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, FlushInstr, ModeRequest, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let flush = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
    /// let pool = Pool::create(dir.path().join("f.pool"), &flush)?;
    /// assert_eq!(pool.flush_instr(), Some(FlushInstr::detect()));
    /// let msync = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Msync);
    /// let pool = Pool::create(dir.path().join("m.pool"), &msync)?;
    /// assert_eq!(pool.flush_instr(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn flush_instr(&self) -> Option<FlushInstr> {
        match self.backend {
            Backend::Flush { instr, .. } => Some(instr),
            Backend::Msync { .. } | Backend::Sim => None,
        }
    }

    /// Whether the pool was opened read-only.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert!(!pool.is_read_only());
    /// let ro = OpenOptions::new("doc").read_only(true);
    /// let (view, _) = Pool::open_simulated(&sim.media_image(), &ro)?;
    /// assert!(view.is_read_only());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether an earlier msync failed (see [`PoolError::Poisoned`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// assert!(!pool.is_poisoned()); // only a failed msync poisons a pool
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Pool-wide persistence counters: everything counted by any of its contexts so far.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let (mut a, mut b) = (pool.flush_context(), pool.flush_context());
    /// pool.persist(&mut a, off, 64)?;
    /// pool.persist(&mut b, off + 64, 128)?;
    /// let total = pool.counters(); // every context's counts
    /// assert_eq!((total.lines_flushed, total.drains), (3, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> PersistCounters {
        self.counters.total()
    }

    /// A new context for flushing and draining (one per thread or lane).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let pool = std::sync::Arc::new(pool);
    /// let workers: Vec<_> = (0..2u64)
    ///     .map(|i| {
    ///         let pool = pool.clone();
    ///         std::thread::spawn(move || {
    ///             let mut ctx = pool.flush_context(); // one per thread
    ///             let off = pool.geometry().root_offset + 64 * i;
    ///             pool.persist(&mut ctx, off, 64).map(|()| ctx.counters().drains)
    ///         })
    ///     })
    ///     .collect();
    /// for w in workers {
    ///     assert_eq!(w.join().unwrap()?, 1);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn flush_context(&self) -> FlushContext {
        FlushContext::new(self.id, &self.counters)
    }

    /// Panics unless `[offset, offset + len)` lies inside the pool.
    #[inline]
    fn check_range(&self, offset: u64, len: u64) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range [{offset:#x}, +{len:#x}) is outside the pool of {:#x} bytes",
            self.header.pool_size
        );
    }

    /// The address of pool offset `offset`, for a range of `len` bytes starting there.
    ///
    /// Computing the address is safe; reading or writing through it is `unsafe` and needs the
    /// caller to rule out data races with every other access to those bytes, and (for writes)
    /// a read-write pool. The address is valid until the pool is dropped.
    ///
    /// # Panics
    /// If the range is not inside the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let p = pool.ptr_at(off, 8).cast::<u64>();
    /// // SAFETY: no other thread or reference touches these bytes; the root area is page-aligned.
    /// unsafe { p.as_ptr().write(7) };
    /// let mut b = [0u8; 8];
    /// // SAFETY: as above.
    /// unsafe { pool.read(off, &mut b) };
    /// assert_eq!(u64::from_ne_bytes(b), 7);
    /// assert!(std::panic::catch_unwind(|| pool.ptr_at(pool.size(), 1)).is_err()); // outside
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn ptr_at(&self, offset: u64, len: u64) -> NonNull<u8> {
        self.check_range(offset, len);
        // SAFETY: offset < pool size = mapping length, checked above.
        unsafe { self.mem.ptr().add(offset as usize) }
    }

    /// Copies `dst.len()` bytes from pool offset `offset` into `dst`.
    ///
    /// # Safety
    /// No other thread writes any of those bytes during the call.
    ///
    /// # Panics
    /// If the range is not inside the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE, POOL_MAGIC};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let mut magic = [0u8; 8];
    /// // SAFETY: nothing writes the header.
    /// unsafe { pool.read(0, &mut magic) };
    /// assert_eq!(magic, POOL_MAGIC);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub unsafe fn read(&self, offset: u64, dst: &mut [u8]) {
        let src = self.ptr_at(offset, dst.len() as u64);
        // SAFETY: the range is inside the mapping (ptr_at); the caller rules out races.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), dst.len()) };
    }

    /// Stores `src` at pool offset `offset` with ordinary stores (not flushed).
    ///
    /// # Safety
    /// No other thread reads or writes any of those bytes during the call, and no reference
    /// to them is live.
    ///
    /// # Panics
    /// If the range is not inside the pool, or the pool is read-only.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, b"volatile") };
    /// assert_eq!(sim.unflushed_lines(), [off]); // not durable until flushed and drained
    /// let mut ctx = pool.flush_context();
    /// pool.persist(&mut ctx, off, 8)?;
    /// assert!(sim.unflushed_lines().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub unsafe fn write(&self, offset: u64, src: &[u8]) {
        assert!(!self.read_only, "write to a read-only pool");
        let dst = self.ptr_at(offset, src.len() as u64);
        // SAFETY: the range is inside the writable mapping; the caller rules out races.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), src.len()) };
    }

    /// Flushes `[offset, offset + len)` through `ctx`: in flush modes writes back each touched
    /// cache line once; in msync mode records the touched pages. Durable at the next
    /// [`drain`](Pool::drain) of the same context.
    ///
    /// # Panics
    /// If the range is not inside the pool, or `ctx` belongs to another pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
    /// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off + 60, &[1; 8]) };
    /// pool.flush(&mut ctx, off + 60, 8); // straddles two cache lines
    /// assert_eq!(ctx.counters().lines_flushed, 2);
    /// assert!(ctx.has_pending());
    /// pool.drain(&mut ctx)?;
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn flush(&self, ctx: &mut FlushContext, offset: u64, len: u64) {
        self.check_range(offset, len);
        assert_eq!(ctx.pool_id, self.id, "flush context of another pool");
        if len == 0 {
            return;
        }
        // The cache-flush case inline (commits flush a few lines each); the others record.
        if let Backend::Flush { instr, .. } = self.backend {
            // SAFETY: the range is inside the mapping (checked above).
            let lines = unsafe {
                cpu::flush_range(
                    instr,
                    self.mem.ptr().as_ptr().add(offset as usize),
                    len as usize,
                )
            };
            ctx.counters.bump(LINES, lines);
            ctx.pending = true;
        } else {
            self.record_flush(ctx, offset, len);
        }
    }

    /// Flushes the cache line at each pool offset in `lines` (each a multiple of 64): as
    /// [`flush`](Pool::flush) of each line, counted once.
    ///
    /// # Panics
    /// If a line is not inside the pool or not a multiple of 64, or `ctx` belongs to another
    /// pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, _sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// pool.flush_lines(&mut ctx, &[off, off + 128]);
    /// assert_eq!(ctx.counters().lines_flushed, 2);
    /// assert!(std::panic::catch_unwind(move || pool.flush_lines(&mut ctx, &[off + 8])).is_err());
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn flush_lines(&self, ctx: &mut FlushContext, lines: &[u64]) {
        assert_eq!(ctx.pool_id, self.id, "flush context of another pool");
        if lines.is_empty() {
            return;
        }
        if let Backend::Flush { instr, .. } = self.backend {
            for &line in lines {
                assert!(line % LINE == 0, "not a cache line: {line:#x}");
                self.check_range(line, LINE);
                // SAFETY: the line is inside the mapping (checked above).
                unsafe { cpu::flush_line(instr, self.mem.ptr().as_ptr().add(line as usize)) };
            }
            ctx.counters.bump(LINES, lines.len() as u64);
            ctx.pending = true;
        } else {
            for &line in lines {
                assert!(line % LINE == 0, "not a cache line: {line:#x}");
                self.flush(ctx, line, LINE);
            }
        }
    }

    /// Stores each `(offset, value)` of `words` (8-byte aligned offsets; in order, so of
    /// duplicate offsets the last wins) and makes it durable at the next
    /// [`drain`](Pool::drain) of `ctx`: in the cache-flush modes with a non-temporal store
    /// each (`movnti`: no flush needed, and the drain after it is much cheaper than after
    /// `clwb`, `docs/REDO.md` §8), elsewhere with an ordinary store and a flush. Counts each
    /// distinct cache line once as flushed. Returns the number of distinct lines. (Meant for a
    /// few words: finding the distinct lines compares every pair.)
    ///
    /// # Safety
    /// No other thread reads or writes any of the words meanwhile, and no reference to one is
    /// live (as [`Pool::write`]; the other bytes of their lines are not touched).
    ///
    /// # Panics
    /// If a word is not inside the pool or not 8-byte aligned, the pool is read-only, or `ctx`
    /// belongs to another pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these words.
    /// let lines = unsafe { pool.store_words_nodrain(&mut ctx, &[(off, 1), (off + 8, 2), (off + 64, 3)]) };
    /// assert_eq!((lines, ctx.counters().lines_flushed), (2, 2));
    /// pool.drain(&mut ctx)?;
    /// assert_eq!(sim.media_image()[off as usize + 64], 3);
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn store_words_nodrain(&self, ctx: &mut FlushContext, words: &[(u64, u64)]) -> u64 {
        assert!(!self.read_only, "write to a read-only pool");
        assert_eq!(ctx.pool_id, self.id, "flush context of another pool");
        let first_of_line = |i: usize| {
            words[..i]
                .iter()
                .all(|&(o, _)| o / LINE != words[i].0 / LINE)
        };
        let mut lines = 0;
        for (i, &(offset, value)) in words.iter().enumerate() {
            assert!(offset % 8 == 0, "misaligned word {offset:#x}");
            if let Backend::Flush { .. } = self.backend {
                let p = self.ptr_at(offset, 8).as_ptr().cast::<u64>();
                // SAFETY: inside the writable mapping (checked by ptr_at; not read-only),
                // 8-byte aligned (page-aligned mapping, aligned offset); the caller rules out
                // concurrent access to the word.
                unsafe { cpu::store_u64_nt(p, value) };
            } else {
                // SAFETY: the caller's contract is write's.
                unsafe { self.write(offset, &value.to_ne_bytes()) };
            }
            lines += u64::from(first_of_line(i));
        }
        if lines == 0 {
            return 0;
        }
        if let Backend::Flush { .. } = self.backend {
            ctx.counters.bump(LINES, lines);
            ctx.pending = true;
        } else {
            // Recorded after every store (the simulated domain snapshots a line when flushed).
            for (i, &(offset, _)) in words.iter().enumerate() {
                if first_of_line(i) {
                    self.record_flush(ctx, offset / LINE * LINE, LINE);
                }
            }
        }
        lines
    }

    /// [`Pool::flush`] in msync mode and in the simulated domain: records what was flushed
    /// (`len > 0`, the range checked).
    fn record_flush(&self, ctx: &mut FlushContext, offset: u64, len: u64) {
        match self.backend {
            Backend::Flush { .. } => unreachable!("cache flushes are not recorded"),
            Backend::Msync { page } => {
                ctx.dirty.add(offset / page, (offset + len).div_ceil(page));
            }
            Backend::Sim => {
                let (first, end) = (offset / LINE, (offset + len).div_ceil(LINE));
                ctx.dirty.add(first, end);
                if let Memory::Sim(sim) = &self.mem {
                    sim.note_flush(first, end);
                }
                ctx.counters.bump(LINES, end - first);
            }
        }
        ctx.pending = true;
    }

    /// Makes everything flushed through `ctx` durable: one `sfence` in flush modes; in msync
    /// mode one `msync` per maximal run of recorded pages, after which they are clean.
    ///
    /// # Errors
    /// [`PoolError::Msync`] if an msync fails (the pool is then poisoned), and
    /// [`PoolError::Poisoned`] on every drain after that.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Msync);
    /// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1; 8]) };
    /// pool.flush(&mut ctx, off, 8); // msync mode: records the page
    /// pool.drain(&mut ctx)?; // one msync of that page
    /// assert_eq!((ctx.counters().drains, ctx.counters().msync_calls), (1, 1));
    /// pool.drain(&mut ctx)?; // nothing flushed since: no-op
    /// assert_eq!(ctx.counters().drains, 1);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn drain(&self, ctx: &mut FlushContext) -> Result<()> {
        assert_eq!(ctx.pool_id, self.id, "flush context of another pool");
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(PoolError::Poisoned);
        }
        if !ctx.pending {
            // Nothing flushed through this context since its last drain: nothing to order.
            return Ok(());
        }
        ctx.pending = false;
        ctx.counters.bump(DRAINS, 1);
        match self.backend {
            Backend::Flush { .. } => {
                cpu::sfence();
                Ok(())
            }
            Backend::Msync { page } => self.msync_dirty(ctx, page),
            Backend::Sim => {
                self.drain_sim(ctx);
                Ok(())
            }
        }
    }

    /// The simulated domain's drain: the recorded lines reach the simulated media.
    fn drain_sim(&self, ctx: &mut FlushContext) {
        let runs = ctx.dirty.coalesce();
        if let Memory::Sim(sim) = &self.mem {
            sim.drain(runs);
        }
        let n = runs.len();
        ctx.dirty.mark_clean(n);
    }

    fn msync_dirty(&self, ctx: &mut FlushContext, page: u64) -> Result<()> {
        let Memory::File { map, .. } = &self.mem else {
            unreachable!("msync backend without a file mapping")
        };
        let FlushContext {
            dirty, counters, ..
        } = ctx;
        let runs = dirty.coalesce_within(MSYNC_MERGE_GAP_PAGES);
        let mut done = 0;
        let mut result = Ok(());
        for &(first, end) in runs {
            let offset = first * page;
            let len = (end * page).min(self.len) - offset;
            counters.bump(MSYNC_CALLS, 1);
            match msync_hook(map, offset as usize, len as usize) {
                Ok(()) => {
                    counters.bump(MSYNC_BYTES, len);
                    done += 1;
                }
                Err(source) => {
                    // After a write-back error nothing can be promised: poison the pool.
                    self.poisoned.store(true, Ordering::Relaxed);
                    result = Err(PoolError::Msync {
                        offset,
                        len,
                        source,
                    });
                    break;
                }
            }
        }
        dirty.mark_clean(done);
        result
    }

    /// `flush` then `drain`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, b"durable!") };
    /// pool.persist(&mut ctx, off, 8)?;
    /// assert_eq!(&sim.media_image()[off as usize..][..8], b"durable!");
    /// # Ok(())
    /// # }
    /// ```
    pub fn persist(&self, ctx: &mut FlushContext, offset: u64, len: u64) -> Result<()> {
        self.flush(ctx, offset, len);
        self.drain(ctx)
    }

    /// Copies `src` to pool offset `offset` and flushes it through `ctx` (durable at the next
    /// drain). In flush modes, copies of [`NT_THRESHOLD`] bytes or more use non-temporal stores
    /// for whole cache lines, which bypass the cache and need no flush.
    ///
    /// # Safety
    /// As [`Pool::write`]: no other thread accesses those bytes during the call, and no
    /// reference to them is live.
    ///
    /// # Panics
    /// If the range is not inside the pool, the pool is read-only, or `ctx` belongs to
    /// another pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE, NT_THRESHOLD};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
    /// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe {
    ///     pool.copy_nodrain(&mut ctx, off, &[1; 64]); // small: stores + a flush
    ///     pool.copy_nodrain(&mut ctx, off + 1024, &vec![2; NT_THRESHOLD]); // non-temporal
    /// }
    /// pool.drain(&mut ctx)?; // both durable now
    /// assert_eq!(ctx.counters().nt_bytes, NT_THRESHOLD as u64);
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn copy_nodrain(&self, ctx: &mut FlushContext, offset: u64, src: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.copy_inner(ctx, offset, src, src.len() >= NT_THRESHOLD) }
    }

    /// Like [`copy_nodrain`](Pool::copy_nodrain), but in the cache-flush modes every whole
    /// destination cache line is written with non-temporal stores whatever the copy's size
    /// (the partial lines at either end with ordinary stores and a flush). For data that is
    /// persisted and not read back soon — logs, applied redo values: on some CPUs a drain
    /// after non-temporal stores completes much sooner than one after `clwb`.
    ///
    /// # Safety
    /// As [`Pool::copy_nodrain`].
    ///
    /// # Panics
    /// As [`Pool::copy_nodrain`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, ModeRequest, Pool, MIN_POOL_SIZE};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = CreateOptions::new("doc", MIN_POOL_SIZE).mode(ModeRequest::Flush);
    /// let pool = Pool::create(dir.path().join("p.pool"), &opts)?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.copy_nt_nodrain(&mut ctx, off, &[3; 128]) }; // two whole lines
    /// pool.drain(&mut ctx)?;
    /// assert_eq!(ctx.counters().nt_bytes, 128);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub unsafe fn copy_nt_nodrain(&self, ctx: &mut FlushContext, offset: u64, src: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.copy_inner(ctx, offset, src, true) }
    }

    /// # Safety
    /// As [`Pool::copy_nodrain`].
    #[inline(always)]
    unsafe fn copy_inner(&self, ctx: &mut FlushContext, offset: u64, src: &[u8], nt: bool) {
        match self.backend {
            Backend::Flush { instr, avx } if nt && !src.is_empty() => {
                assert!(!self.read_only, "write to a read-only pool");
                assert_eq!(ctx.pool_id, self.id, "flush context of another pool");
                let dst = self.ptr_at(offset, src.len() as u64);
                // SAFETY: the range is inside the writable mapping; the caller rules out races;
                // `src` is a live slice, so it cannot overlap the exclusively-owned destination;
                // `avx` is what `cpu::has_avx` said at open.
                let (lines, nt) =
                    unsafe { cpu::copy_nt(instr, avx, dst.as_ptr(), src.as_ptr(), src.len()) };
                if lines != 0 {
                    ctx.counters.bump(LINES, lines);
                }
                ctx.counters.bump(NT_BYTES, nt);
                ctx.pending = true;
            }
            // SAFETY: forwarded contract.
            _ => unsafe { self.copy_then_flush(ctx, offset, src) },
        }
    }

    /// Ordinary stores, then a flush.
    ///
    /// # Safety
    /// As [`Pool::copy_nodrain`].
    unsafe fn copy_then_flush(&self, ctx: &mut FlushContext, offset: u64, src: &[u8]) {
        // SAFETY: the caller's contract is write's.
        unsafe { self.write(offset, src) };
        self.flush(ctx, offset, src.len() as u64);
    }

    /// [`copy_nodrain`](Pool::copy_nodrain) then [`drain`](Pool::drain).
    ///
    /// # Safety
    /// As [`Pool::copy_nodrain`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    ///
    /// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().root_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.copy_persist(&mut ctx, off, b"hello")? };
    /// assert_eq!(&sim.media_image()[off as usize..][..5], b"hello");
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn copy_persist(
        &self,
        ctx: &mut FlushContext,
        offset: u64,
        src: &[u8],
    ) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.copy_nodrain(ctx, offset, src) };
        self.drain(ctx)
    }
}

/// Opens the pool file for reading (and writing), checking it is a regular file.
fn open_file(path: &Path, writable: bool) -> Result<File> {
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is refused just
    // below); on a regular file the flag has no effect.
    let file = FsOpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| PoolError::from_open(path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| PoolError::io(path, "fstat", e))?;
    if !meta.file_type().is_file() {
        return Err(PoolError::NotARegularFile { path: path.into() });
    }
    Ok(file)
}

/// Reads the header page and validates it against the file and the expected layout.
fn read_header(
    file: &File,
    path: &Path,
    writable: bool,
    layout: Option<&str>,
) -> Result<PoolHeader> {
    let len = file
        .metadata()
        .map_err(|e| PoolError::io(path, "fstat", e))?
        .len();
    let mut page = [0u8; HEADER_SIZE];
    if len >= HEADER_SIZE as u64 {
        file.read_exact_at(&mut page, 0)
            .map_err(|e| PoolError::io(path, "read header", e))?;
    }
    check_header(&page, len, path, writable, layout)
}

/// Validates a header page against the length of the pool image it heads and the expected
/// layout (`docs/FORMAT.md` §2.3 steps 5–16; `page` is ignored when `len` < 4096).
fn check_header(
    page: &[u8; HEADER_SIZE],
    len: u64,
    path: &Path,
    writable: bool,
    layout: Option<&str>,
) -> Result<PoolHeader> {
    if len == 0 {
        return Err(PoolError::EmptyFile { path: path.into() });
    }
    if len < HEADER_SIZE as u64 {
        return Err(PoolError::Truncated {
            path: path.into(),
            actual: len,
            expected: HEADER_SIZE as u64,
        });
    }
    let header = PoolHeader::validate(page, path, writable)?;
    if len < header.pool_size {
        return Err(PoolError::Truncated {
            path: path.into(),
            actual: len,
            expected: header.pool_size,
        });
    }
    if len > header.pool_size {
        return Err(PoolError::SizeMismatch {
            path: path.into(),
            actual: len,
            expected: header.pool_size,
        });
    }
    if let Some(expected) = layout {
        let found = header.layout_name();
        if found != expected {
            return Err(PoolError::LayoutMismatch {
                path: path.into(),
                expected: expected.into(),
                found,
            });
        }
    }
    Ok(header)
}

fn system_page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        PAGE
    }
}

/// Removes a partially created pool file unless disarmed.
struct RemoveOnDrop<'a>(Option<&'a Path>);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
            let _ = file::sync_parent_dir(p);
        }
    }
}

#[cfg(not(test))]
#[inline]
fn msync_hook(map: &Mapping, offset: usize, len: usize) -> std::io::Result<()> {
    map.msync(offset, len)
}

#[cfg(test)]
thread_local! {
    /// Test-only fault injection: the next msync on this thread fails with this errno.
    static FAIL_NEXT_MSYNC: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn msync_hook(map: &Mapping, offset: usize, len: usize) -> std::io::Result<()> {
    match FAIL_NEXT_MSYNC.with(|f| f.take()) {
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => map.msync(offset, len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Pool>();
        send_sync::<FlushContext>();
    }

    #[test]
    fn msync_failure_is_returned_and_poisons_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pool");
        let pool = Pool::create(
            &path,
            &CreateOptions::new("t", MIN_POOL_SIZE).mode(ModeRequest::Msync),
        )
        .unwrap();
        let mut ctx = pool.flush_context();
        let off = pool.geometry().heap_offset;
        // SAFETY: single-threaded test, no references into the pool.
        unsafe { pool.write(off, &[1; 8]) };
        pool.flush(&mut ctx, off, 8);
        FAIL_NEXT_MSYNC.with(|f| f.set(Some(libc::EIO)));
        let e = pool.drain(&mut ctx).unwrap_err();
        assert!(
            matches!(&e, PoolError::Msync { source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{e}"
        );
        assert!(pool.is_poisoned());
        // Never swallowed: every later durability point fails too.
        pool.flush(&mut ctx, off, 8);
        assert!(matches!(pool.drain(&mut ctx), Err(PoolError::Poisoned)));
        drop(pool);
        // Reopening starts afresh.
        let pool = Pool::open(&path, &OpenOptions::new("t").mode(ModeRequest::Msync)).unwrap();
        assert!(!pool.is_poisoned());
    }
}

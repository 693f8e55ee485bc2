//! The simulated persistence domain: a pool in heap memory whose flushes and drains are
//! modelled at cache-line granularity, for crash-state exploration.
//!
//! It keeps two images of the pool:
//! * the **working memory** the program reads and writes (what the CPU caches hold), and
//! * the **media image**: what would survive a power cut.
//!
//! The model is x86 persistence: a line flushed through a context reaches the media image at
//! that context's next drain; a line written (flushed or not) but not yet drained may or may
//! not be on the media at a crash, since the CPU may evict it at any time. So at any drain
//! point the set of possible crash images is the media image plus any subset of the lines whose
//! working contents differ from the media ("in flight"). [`CrashPoint`] enumerates them.
//!
//! The pool runs exactly the flush-mode code above the seam: only [`Pool::flush`],
//! [`Pool::drain`] and the memory behind [`Pool::ptr_at`] differ (see `Backend::Sim`).
//!
//! A crash hook ([`SimDomain::set_crash_hook`]) runs at every drain, before the drain takes
//! effect, and reads the whole working memory: while a hook is set, no other thread may write
//! the pool during a drain (exploration tests are single-threaded, or synchronise).
//!
//! [`Pool::flush`]: crate::Pool::flush
//! [`Pool::drain`]: crate::Pool::drain
//! [`Pool::ptr_at`]: crate::Pool::ptr_at

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::raw::heapmem::HeapMem;

/// Size of the unit of persistence (a cache line).
pub const LINE: u64 = 64;

type Hook = Box<dyn FnMut(&CrashPoint<'_>) + Send>;

/// The simulated persistence domain behind a simulated pool. Obtain one from
/// [`Pool::create_simulated`](crate::Pool::create_simulated) or
/// [`Pool::open_simulated`](crate::Pool::open_simulated).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().heap_offset;
/// let mut ctx = pool.flush_context();
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.write(off, &[7; 8]) };
/// assert_eq!(sim.unflushed_lines(), [off]); // written, not flushed
/// pool.persist(&mut ctx, off, 8)?; // flush + drain
/// assert!(sim.unflushed_lines().is_empty());
/// assert_eq!(sim.media_image()[off as usize], 7); // survives a power cut
/// # Ok(())
/// # }
/// ```
pub struct SimDomain {
    working: HeapMem,
    len: usize,
    state: Mutex<SimState>,
}

struct SimState {
    media: Vec<u8>,
    drains: u64,
    /// Lines flushed through some context and not drained yet, with how many contexts did so.
    flushed: HashMap<u64, u32>,
    hook: Option<Hook>,
}

impl std::fmt::Debug for SimDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDomain")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// One line that differs between working memory and media at a crash point.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().heap_offset;
/// let mut ctx = pool.flush_context();
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.write(off + 3, &[9]) };
/// pool.flush(&mut ctx, off + 3, 1); // flushed, not drained yet
/// let line = sim.with_crash_point(|cp| cp.in_flight[0].clone());
/// assert_eq!(line.offset, off); // the whole 64-byte line
/// assert_eq!(line.data[3], 9);
/// assert!(line.flushed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlightLine {
    /// Pool offset of the line (a multiple of 64).
    pub offset: u64,
    /// Its contents in working memory.
    pub data: [u8; LINE as usize],
    /// Whether some context flushed it since that context's last drain (a line that differs
    /// and was never flushed is what a "pmemcheck" reports as a missing flush).
    pub flushed: bool,
}

/// The persistence state at one instant: the media image and the lines in flight.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().heap_offset;
/// let mut ctx = pool.flush_context();
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.write(off, &[1; 8]) };
/// pool.flush(&mut ctx, off, 8);
/// sim.with_crash_point(|cp| {
///     assert_eq!(cp.drain, 0); // no drain yet
///     assert_eq!(cp.media[off as usize], 0); // not surely durable...
///     assert_eq!(cp.in_flight.len(), 1); // ...but may be written back any time
/// });
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CrashPoint<'a> {
    /// Drains completed before this point.
    pub drain: u64,
    /// What is surely on the media.
    pub media: &'a [u8],
    /// Lines that may or may not be on the media, in increasing offset order.
    pub in_flight: Vec<InFlightLine>,
}

/// Building crash images from a crash point.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, OpenOptions, Pool, MIN_POOL_SIZE};
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().heap_offset;
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.write(off, &[5; 8]) };
/// // Each possible crash image opens as a pool of its own.
/// let images: Vec<Vec<u8>> = sim.with_crash_point(|cp| cp.images(4, 0, 0).collect());
/// assert_eq!(images.len(), 2); // the line written back, or not
/// for image in &images {
///     let (crashed, _) = Pool::open_simulated(image, &OpenOptions::new("doc"))?;
///     let mut b = [0u8; 1];
///     // SAFETY: nothing else uses `crashed`.
///     unsafe { crashed.read(off, &mut b) };
///     assert!(b[0] == 0 || b[0] == 5);
/// }
/// # Ok(())
/// # }
/// ```
impl CrashPoint<'_> {
    /// The media image with exactly the in-flight lines selected by `select(i)` written back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().heap_offset;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe {
    ///     pool.write(off, &[1]);
    ///     pool.write(off + 64, &[2]);
    /// }
    /// let img = sim.with_crash_point(|cp| cp.image_with(|i| i == 1)); // only the second line
    /// assert_eq!((img[off as usize], img[off as usize + 64]), (0, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn image_with(&self, mut select: impl FnMut(usize) -> bool) -> Vec<u8> {
        let mut img = self.media.to_vec();
        for (i, l) in self.in_flight.iter().enumerate() {
            if select(i) {
                let o = l.offset as usize;
                img[o..o + LINE as usize].copy_from_slice(&l.data);
            }
        }
        img
    }

    /// How many images [`CrashPoint::images`] yields with these limits.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().heap_offset;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1; 192]) }; // three lines in flight
    /// sim.with_crash_point(|cp| {
    ///     assert_eq!(cp.image_count(3, 10), 8); // all 2^3 subsets
    ///     assert_eq!(cp.image_count(2, 10), 10); // too many lines: 10 samples
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn image_count(&self, exhaustive_max: usize, samples: usize) -> usize {
        let n = self.in_flight.len();
        if n <= exhaustive_max {
            1 << n
        } else {
            samples.max(2)
        }
    }

    /// Every possible crash image when at most `exhaustive_max` lines are in flight (all
    /// 2^n subsets); otherwise `samples` subsets chosen by a generator seeded with `seed`
    /// (always including "none written back" and "all written back").
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// let off = pool.geometry().heap_offset as usize;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off as u64, &[1; 128]) }; // two lines in flight
    /// let images: Vec<Vec<u8>> = sim.with_crash_point(|cp| cp.images(8, 0, 0).collect());
    /// let mut seen: Vec<(u8, u8)> = images.iter().map(|i| (i[off], i[off + 64])).collect();
    /// seen.sort();
    /// assert_eq!(seen, [(0, 0), (0, 1), (1, 0), (1, 1)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn images(
        &self,
        exhaustive_max: usize,
        samples: usize,
        seed: u64,
    ) -> impl Iterator<Item = Vec<u8>> + '_ {
        let n = self.in_flight.len();
        let count = self.image_count(exhaustive_max, samples);
        let exhaustive = n <= exhaustive_max;
        let mut rng = SplitMix64(seed ^ self.drain.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (0..count).map(move |k| {
            if exhaustive {
                self.image_with(|i| k >> i & 1 == 1)
            } else if k == 0 {
                self.image_with(|_| false)
            } else if k == 1 {
                self.image_with(|_| true)
            } else {
                let bits: Vec<bool> = (0..n).map(|_| rng.next() & 1 == 1).collect();
                self.image_with(|i| bits[i])
            }
        })
    }
}

/// A tiny deterministic generator for sampling subsets (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Observing and exploring the simulated domain.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
/// let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
/// let off = pool.geometry().heap_offset;
/// let mut ctx = pool.flush_context();
/// // SAFETY: no other thread or reference touches these bytes.
/// unsafe { pool.write(off, b"durable!") };
/// pool.persist(&mut ctx, off, 8)?;
/// assert_eq!(sim.drains(), 1);
/// assert_eq!(sim.media_image(), sim.working_image()); // nothing in flight
/// # Ok(())
/// # }
/// ```
impl SimDomain {
    /// A domain whose working memory and media both hold `image`.
    pub(crate) fn from_image(image: &[u8]) -> SimDomain {
        let working = HeapMem::zeroed(image.len());
        // SAFETY: the allocation is `image.len()` bytes and not shared with anyone yet.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), working.ptr().as_ptr(), image.len())
        };
        SimDomain {
            working,
            len: image.len(),
            state: Mutex::new(SimState {
                media: image.to_vec(),
                drains: 0,
                flushed: HashMap::new(),
                hook: None,
            }),
        }
    }

    pub(crate) fn working_ptr(&self) -> std::ptr::NonNull<u8> {
        self.working.ptr()
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads line `line` of working memory.
    fn working_line(&self, line: u64) -> [u8; LINE as usize] {
        let mut out = [0u8; LINE as usize];
        let off = (line * LINE) as usize;
        assert!(off + LINE as usize <= self.len);
        // SAFETY: the line is inside the allocation (asserted) and 64-byte aligned (the
        // allocation is page-aligned), so its eight words are aligned u64s. Concurrent writers
        // are excluded by the documented contract of the simulated domain (module docs);
        // volatile reads keep the compiler from assuming otherwise.
        unsafe {
            let src = self.working.ptr().as_ptr().add(off) as *const u64;
            for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
                chunk.copy_from_slice(&std::ptr::read_volatile(src.add(i)).to_ne_bytes());
            }
        }
        out
    }

    /// Records that lines `[first, end)` were flushed through some context.
    pub(crate) fn note_flush(&self, first: u64, end: u64) {
        let mut st = self.state();
        for l in first..end {
            *st.flushed.entry(l).or_insert(0) += 1;
        }
    }

    /// A drain of a context that flushed the line runs `runs`: runs the crash hook on the state
    /// just before the drain, then writes those lines back to the media.
    pub(crate) fn drain(&self, runs: &[(u64, u64)]) {
        let mut st = self.state();
        if let Some(mut hook) = st.hook.take() {
            let cp = self.crash_point_locked(&st);
            hook(&cp);
            drop(cp);
            st.hook = Some(hook);
        }
        for &(first, end) in runs {
            for l in first..end {
                let data = self.working_line(l);
                let o = (l * LINE) as usize;
                st.media[o..o + LINE as usize].copy_from_slice(&data);
                if let Some(c) = st.flushed.get_mut(&l) {
                    *c -= 1;
                    if *c == 0 {
                        st.flushed.remove(&l);
                    }
                }
            }
        }
        st.drains += 1;
    }

    fn crash_point_locked<'a>(&self, st: &'a SimState) -> CrashPoint<'a> {
        let mut in_flight = Vec::new();
        for line in 0..(self.len as u64 / LINE) {
            let data = self.working_line(line);
            let o = (line * LINE) as usize;
            if data[..] != st.media[o..o + LINE as usize] {
                in_flight.push(InFlightLine {
                    offset: line * LINE,
                    data,
                    flushed: st.flushed.contains_key(&line),
                });
            }
        }
        CrashPoint {
            drain: st.drains,
            media: &st.media,
            in_flight,
        }
    }

    /// Calls `hook` at every later drain, with the crash point just before that drain takes
    /// effect. The hook must not use this domain's pool (the domain is locked while it runs);
    /// it may open other simulated pools, e.g. from the crash images.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::{Arc, Mutex};
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// sim.set_crash_hook(move |cp| log.lock().unwrap().push(cp.in_flight.len()));
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1; 8]) };
    /// pool.persist(&mut ctx, off, 8)?; // the hook runs just before this drain
    /// sim.clear_crash_hook();
    /// assert_eq!(*seen.lock().unwrap(), [1]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_crash_hook(&self, hook: impl FnMut(&CrashPoint<'_>) + Send + 'static) {
        self.state().hook = Some(Box::new(hook));
    }

    /// Removes the crash hook.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// let calls = Arc::new(AtomicU64::new(0));
    /// let c = Arc::clone(&calls);
    /// sim.set_crash_hook(move |_| {
    ///     c.fetch_add(1, Ordering::Relaxed);
    /// });
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1]) };
    /// pool.persist(&mut ctx, off, 1)?;
    /// sim.clear_crash_hook();
    /// // SAFETY: as above.
    /// unsafe { pool.write(off, &[2]) };
    /// pool.persist(&mut ctx, off, 1)?; // no hook any more
    /// assert_eq!(calls.load(Ordering::Relaxed), 1);
    /// assert_eq!(sim.drains(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn clear_crash_hook(&self) {
        self.state().hook = None;
    }

    /// Runs `f` on the crash point of this instant (e.g. after the last drain of a workload).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1]) };
    /// let offsets: Vec<u64> = sim.with_crash_point(|cp| cp.in_flight.iter().map(|l| l.offset).collect());
    /// assert_eq!(offsets, [off]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_crash_point<R>(&self, f: impl FnOnce(&CrashPoint<'_>) -> R) -> R {
        let st = self.state();
        let cp = self.crash_point_locked(&st);
        f(&cp)
    }

    /// A copy of the media image: what a power cut now would surely leave.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[3]) };
    /// pool.flush(&mut ctx, off, 1);
    /// assert_eq!(sim.media_image()[off as usize], 0); // flushed, not drained
    /// pool.drain(&mut ctx)?;
    /// assert_eq!(sim.media_image()[off as usize], 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn media_image(&self) -> Vec<u8> {
        self.state().media.clone()
    }

    /// A copy of the working memory, as if every line were written back (a clean shutdown).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[4]) }; // never flushed
    /// assert_eq!(sim.working_image()[off as usize], 4);
    /// assert_eq!(sim.media_image()[off as usize], 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn working_image(&self) -> Vec<u8> {
        (0..self.len as u64 / LINE)
            .flat_map(|l| self.working_line(l))
            .collect()
    }

    /// Offsets of lines modified in working memory but neither on the media nor flushed by any
    /// context: at a commit, these are missing flushes (what pmemcheck would report).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// let mut ctx = pool.flush_context();
    /// // SAFETY: no other thread or reference touches these bytes.
    /// unsafe { pool.write(off, &[1; 130]) }; // lines off, off + 64, off + 128
    /// pool.flush(&mut ctx, off, 64); // forgot the other two
    /// assert_eq!(sim.unflushed_lines(), [off + 64, off + 128]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn unflushed_lines(&self) -> Vec<u64> {
        self.with_crash_point(|cp| {
            cp.in_flight
                .iter()
                .filter(|l| !l.flushed)
                .map(|l| l.offset)
                .collect()
        })
    }

    /// Drains completed so far.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use pmstore_pool::{CreateOptions, Pool, MIN_POOL_SIZE};
    /// # let (pool, sim) = Pool::create_simulated(&CreateOptions::new("doc", MIN_POOL_SIZE))?;
    /// # let off = pool.geometry().heap_offset;
    /// let mut ctx = pool.flush_context();
    /// pool.drain(&mut ctx)?; // nothing flushed: no drain happens
    /// assert_eq!(sim.drains(), 0);
    /// pool.flush(&mut ctx, off, 8);
    /// pool.drain(&mut ctx)?;
    /// assert_eq!(sim.drains(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn drains(&self) -> u64 {
        self.state().drains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_enumerate_every_subset_or_a_seeded_sample() {
        let media = vec![0u8; 4 * LINE as usize];
        let line = |o: u64| InFlightLine {
            offset: o,
            data: [o as u8 + 1; 64],
            flushed: true,
        };
        let cp = CrashPoint {
            drain: 3,
            media: &media,
            in_flight: vec![line(0), line(128)],
        };
        let imgs: Vec<Vec<u8>> = cp.images(12, 100, 7).collect();
        assert_eq!(imgs.len(), 4);
        let firsts: std::collections::BTreeSet<(u8, u8)> =
            imgs.iter().map(|i| (i[0], i[128])).collect();
        assert_eq!(firsts.len(), 4, "all four subsets, each once");
        // Sampling: same seed, same images; the extremes are always there.
        let a: Vec<Vec<u8>> = cp.images(1, 5, 42).collect();
        let b: Vec<Vec<u8>> = cp.images(1, 5, 42).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 5);
        assert_eq!((a[0][0], a[0][128]), (0, 0));
        assert_eq!((a[1][0], a[1][128]), (1, 129));
    }
}

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
#[derive(Debug)]
pub struct CrashPoint<'a> {
    /// Drains completed before this point.
    pub drain: u64,
    /// What is surely on the media.
    pub media: &'a [u8],
    /// Lines that may or may not be on the media, in increasing offset order.
    pub in_flight: Vec<InFlightLine>,
}

impl CrashPoint<'_> {
    /// The media image with exactly the in-flight lines selected by `select(i)` written back.
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
    pub fn set_crash_hook(&self, hook: impl FnMut(&CrashPoint<'_>) + Send + 'static) {
        self.state().hook = Some(Box::new(hook));
    }

    /// Removes the crash hook.
    pub fn clear_crash_hook(&self) {
        self.state().hook = None;
    }

    /// Runs `f` on the crash point of this instant (e.g. after the last drain of a workload).
    pub fn with_crash_point<R>(&self, f: impl FnOnce(&CrashPoint<'_>) -> R) -> R {
        let st = self.state();
        let cp = self.crash_point_locked(&st);
        f(&cp)
    }

    /// A copy of the media image: what a power cut now would surely leave.
    pub fn media_image(&self) -> Vec<u8> {
        self.state().media.clone()
    }

    /// A copy of the working memory, as if every line were written back (a clean shutdown).
    pub fn working_image(&self) -> Vec<u8> {
        (0..self.len as u64 / LINE)
            .flat_map(|l| self.working_line(l))
            .collect()
    }

    /// Offsets of lines modified in working memory but neither on the media nor flushed by any
    /// context: at a commit, these are missing flushes (what pmemcheck would report).
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

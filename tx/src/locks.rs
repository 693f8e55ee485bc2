//! The volatile striped lock table of the transaction layer.
//!
//! Transactions use strict two-phase locking on this table, keyed by pool offset: every read
//! of pool bytes inside a transaction takes a shared lock on the stripes covering the byte
//! range, every write an exclusive lock, and all are held until the transaction commits or
//! aborts ([`LockSet::release_all`]). Pointers into the pool may be forged or dangling, so this
//! table is what makes data races on pool bytes impossible.
//!
//! Pool offsets `[k << STRIPE_SHIFT, (k + 1) << STRIPE_SHIFT)` map to stripe `k mod stripes`;
//! each stripe has one lock word on its own cache line:
//!
//! * `0`: free;
//! * `EXCLUSIVE` (bit 31): one writer;
//! * otherwise: the number of readers.
//!
//! Acquisitions use `Acquire` and releases `Release`, so everything a holder did to the pool
//! bytes happens-before whatever the next holder of the stripe does with them (the release
//! sequence of a lock word is continued by every read-modify-write of readers).
//!
//! Deadlocks are resolved by giving up: an acquisition that cannot succeed within the table's
//! [`Budget`] returns [`Conflict`]; the caller then aborts the whole transaction (releasing
//! everything with [`LockSet::release_all`]) and retries. Stripes of one call are acquired in
//! ascending stripe order, which makes deadlocks rarer but cannot rule them out (transactions
//! lock ranges one call at a time, and shared locks are upgraded in place).

use core::fmt;
use core::ops::Range;

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::primitive::{spin_loop, yield_now, AtomicU32, Ordering};

/// log2 of the bytes covered by one stripe: pool offsets `[k << STRIPE_SHIFT, (k + 1) <<
/// STRIPE_SHIFT)` map to stripe `k mod stripes` (256-byte stripes).
pub const STRIPE_SHIFT: u32 = 8;

/// The default number of stripes of a [`LockTable`] (a power of two).
pub const DEFAULT_STRIPES: usize = 4096;

/// Stripes a [`LockSet`] holds without a heap allocation.
const INLINE_HELD: usize = 8;

/// Lock word value of a stripe held by one writer.
const EXCLUSIVE: u32 = 1 << 31;

/// A shared acquisition needs fewer readers than this (so the count never reaches the
/// exclusive bit); a word at this count is treated as busy.
const MAX_READERS: u32 = EXCLUSIVE - 1;

/// Source of [`LockTable`] identities (plain `std` even under loom: not part of any model).
static NEXT_TABLE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A lock could not be acquired within the table's [`Budget`]: the transaction must release
/// everything it holds ([`LockSet::release_all`]) and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict;

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("lock conflict: a stripe lock could not be acquired within the budget")
    }
}

impl std::error::Error for Conflict {}

/// A lock mode. [`Mode::Exclusive`] is stronger than [`Mode::Shared`]: a stripe held
/// exclusively also counts as held shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Any number of readers.
    Shared,
    /// One writer and no reader.
    Exclusive,
}

/// How long one stripe acquisition may wait: up to `spins` busy-wait rounds
/// (`core::hint::spin_loop`), then up to `yields` rounds of `std::thread::yield_now`, then
/// [`Conflict`]. Every round retries the acquisition once, so an acquisition makes at most
/// `1 + spins + yields` attempts; `Budget { spins: 0, yields: 0 }` tries exactly once.
///
/// The default (64 spins, 200 yields) costs one compare-and-swap for an uncontended stripe,
/// waits out a holder of a few microseconds in the spin phase, and gives up after roughly a
/// few hundred microseconds when the holder does not go away (with more runnable threads than
/// cores, a yield may take up to a scheduler time slice, so the wait can then be longer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Busy-wait rounds before yielding.
    pub spins: u32,
    /// `yield_now` rounds after the spins, before giving up.
    pub yields: u32,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            spins: 64,
            yields: 200,
        }
    }
}

/// What one stripe acquisition does to the lock word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `n -> n + 1` while not exclusive.
    Shared,
    /// `0 -> EXCLUSIVE`.
    Exclusive,
    /// `1 -> EXCLUSIVE`: the caller holds the stripe shared and must be its only reader.
    Upgrade,
}

/// The volatile lock table: one lock word per stripe, each on its own cache line. Shared by
/// every transaction of one pool; each transaction tracks what it holds in its own
/// [`LockSet`].
pub struct LockTable {
    words: Box<[CachePadded<AtomicU32>]>,
    mask: u64,
    budget: Budget,
    id: u64,
}

impl fmt::Debug for LockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockTable")
            .field("stripes", &self.words.len())
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl LockTable {
    /// A table of `stripes` free stripes with the default [`Budget`].
    ///
    /// # Panics
    ///
    /// Unless `stripes` is a power of two (at least 1) and at most 2^32.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Budget, LockTable};
    ///
    /// let table = LockTable::new(1024);
    /// assert_eq!(table.stripes(), 1024);
    /// assert_eq!(table.budget(), Budget::default());
    /// ```
    pub fn new(stripes: usize) -> LockTable {
        LockTable::with_budget(stripes, Budget::default())
    }

    /// A table of `stripes` free stripes whose acquisitions wait at most `budget`.
    ///
    /// # Panics
    ///
    /// Unless `stripes` is a power of two (at least 1) and at most 2^32.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Budget, Conflict, LockSet, LockTable};
    ///
    /// // Try each stripe exactly once: a held stripe is an immediate conflict.
    /// let table = LockTable::with_budget(16, Budget { spins: 0, yields: 0 });
    /// let (mut a, mut b) = (LockSet::new(), LockSet::new());
    /// a.lock_exclusive(&table, 0, 8)?;
    /// assert_eq!(b.lock_shared(&table, 0, 8), Err(Conflict));
    /// a.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    pub fn with_budget(stripes: usize, budget: Budget) -> LockTable {
        assert!(
            stripes.is_power_of_two() && u32::try_from(stripes - 1).is_ok(),
            "LockTable: stripe count {stripes} is not a power of two in 1..=2^32"
        );
        LockTable {
            words: (0..stripes)
                .map(|_| CachePadded::new(AtomicU32::new(0)))
                .collect(),
            mask: stripes as u64 - 1,
            budget,
            id: NEXT_TABLE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The number of stripes.
    ///
    /// ```
    /// use pmstore_tx::locks::{LockTable, DEFAULT_STRIPES};
    ///
    /// assert_eq!(LockTable::new(DEFAULT_STRIPES).stripes(), 4096);
    /// ```
    pub fn stripes(&self) -> usize {
        self.words.len()
    }

    /// The budget of every acquisition on this table.
    ///
    /// ```
    /// use pmstore_tx::locks::{Budget, LockTable};
    ///
    /// let budget = Budget { spins: 8, yields: 1 };
    /// assert_eq!(LockTable::with_budget(4, budget).budget(), budget);
    /// ```
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The stripe indexes covering the pool bytes `[offset, offset + len)`, sorted ascending,
    /// without duplicates. `len == 0` covers nothing; a range of at least as many stripes as
    /// the table has covers every stripe once; a range that wraps around the end of the table
    /// yields the low stripes first. A range reaching past `u64::MAX` is cut there.
    ///
    /// ```
    /// use pmstore_tx::locks::{LockTable, STRIPE_SHIFT};
    ///
    /// let table = LockTable::new(4); // stripes of 256 bytes, 1 KiB around
    /// assert_eq!(1u64 << STRIPE_SHIFT, 256);
    /// assert_eq!(table.stripes_for(250, 10).collect::<Vec<_>>(), [0, 1]);
    /// assert_eq!(table.stripes_for(768, 512).collect::<Vec<_>>(), [0, 3]); // wraps: low first
    /// assert_eq!(table.stripes_for(0, 1 << 20).count(), 4); // each stripe once
    /// assert_eq!(table.stripes_for(100, 0).count(), 0);
    /// ```
    pub fn stripes_for(&self, offset: u64, len: u64) -> impl Iterator<Item = usize> + Clone {
        let (low, high) = self.ranges(offset, len);
        low.chain(high)
    }

    /// [`LockTable::stripes_for`] as two ascending, disjoint ranges (`low` before `high`).
    fn ranges(&self, offset: u64, len: u64) -> (Range<usize>, Range<usize>) {
        let n = self.words.len();
        if len == 0 {
            return (0..0, 0..0);
        }
        let first = offset >> STRIPE_SHIFT;
        let last = offset.saturating_add(len - 1) >> STRIPE_SHIFT;
        if last - first >= self.mask {
            return (0..n, 0..0);
        }
        // Both fit in usize: they are below the stripe count.
        let start = (first & self.mask) as usize;
        let end = (last & self.mask) as usize;
        if start <= end {
            (start..end + 1, 0..0)
        } else {
            (0..end + 1, start..n)
        }
    }

    /// The one stripe covering `[offset, offset + len)`, if the range is non-empty and lies in
    /// one stripe (the common case of a small object: see [`LockTable::stripes_for`]).
    #[inline]
    fn one_stripe(&self, offset: u64, len: u64) -> Option<usize> {
        let last = offset.saturating_add(len.checked_sub(1)?);
        // Both below the stripe count after masking, so they fit in usize.
        ((offset ^ last) >> STRIPE_SHIFT == 0)
            .then_some((offset >> STRIPE_SHIFT & self.mask) as usize)
    }

    /// Acquires stripe `k` as `op` says, waiting at most the table's budget.
    #[inline]
    fn acquire(&self, k: usize, op: Op) -> Result<(), Conflict> {
        // First guess: the uncontended state, so an uncontended acquisition is one CAS (inlined
        // into the callers; the waiting loop is not).
        let (guess, new) = match op {
            Op::Shared => (0, 1),
            Op::Exclusive => (0, EXCLUSIVE),
            Op::Upgrade => (1, EXCLUSIVE),
        };
        match self.words[k].compare_exchange(guess, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            // A wrong guess is not an attempt: the loop tries once with the real value.
            Err(actual) => self.acquire_from(k, op, actual),
        }
    }

    /// [`LockTable::acquire`] after its guess failed: `current` is the value the word held.
    #[inline(never)]
    fn acquire_from(&self, k: usize, op: Op, mut current: u32) -> Result<(), Conflict> {
        let word = &*self.words[k];
        let spins = u64::from(self.budget.spins);
        let rounds = spins + u64::from(self.budget.yields);
        let mut round = 0u64;
        loop {
            let (admissible, new) = match op {
                Op::Shared => (current < MAX_READERS, current.wrapping_add(1)),
                Op::Exclusive => (current == 0, EXCLUSIVE),
                Op::Upgrade => (current == 1, EXCLUSIVE),
            };
            if admissible
                && word
                    .compare_exchange(current, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(());
            }
            if round >= rounds {
                return Err(Conflict);
            }
            if round < spins {
                spin_loop();
            } else {
                yield_now();
            }
            round += 1;
            current = word.load(Ordering::Relaxed);
        }
    }

    /// Releases one shared hold on stripe `k`.
    fn release_shared(&self, k: usize) {
        let prev = self.words[k].fetch_sub(1, Ordering::Release);
        debug_assert!(
            prev != 0 && prev & EXCLUSIVE == 0,
            "stripe {k} released shared but its word is {prev:#x}"
        );
    }

    /// Releases the exclusive hold on stripe `k`.
    fn release_exclusive(&self, k: usize) {
        // Nobody else writes the word while it is held exclusively.
        debug_assert_eq!(self.words[k].load(Ordering::Relaxed), EXCLUSIVE);
        self.words[k].store(0, Ordering::Release);
    }

    /// Turns the exclusive hold on stripe `k` back into the (only) shared one.
    fn downgrade(&self, k: usize) {
        debug_assert_eq!(self.words[k].load(Ordering::Relaxed), EXCLUSIVE);
        self.words[k].store(1, Ordering::Release);
    }

    /// The raw lock word of stripe `k` (tests only).
    #[cfg(test)]
    fn raw(&self, k: usize) -> u32 {
        self.words[k].load(Ordering::Relaxed)
    }
}

/// The stripe locks one transaction holds, with their modes (one per transaction).
///
/// A set is used with the table whose locks it holds: every method panics when given another
/// table while the set holds locks (an empty set may be used with any table).
///
/// The owner must call [`LockSet::release_all`] before dropping a set that holds locks (the
/// transaction layer does it when a transaction commits, aborts or is dropped): the set does
/// not know its table, so dropping it leaks its locks, and every later transaction touching
/// those stripes gets [`Conflict`] for ever. Debug builds assert this on drop (unless the
/// thread is already panicking).
#[derive(Debug, Default)]
pub struct LockSet {
    /// Identity of the table the held locks belong to (meaningful while `held` is non-empty).
    table: u64,
    /// Held stripes with their modes, sorted by stripe, no duplicates. Inline up to
    /// `INLINE_HELD` entries: a small transaction's set allocates nothing.
    held: SmallVec<[(u32, Mode); INLINE_HELD]>,
}

impl LockSet {
    /// An empty set.
    ///
    /// ```
    /// use pmstore_tx::locks::LockSet;
    ///
    /// let set = LockSet::new();
    /// assert!(set.is_empty());
    /// assert_eq!(set.len(), 0);
    /// ```
    pub fn new() -> LockSet {
        LockSet::default()
    }

    /// Takes a shared lock on every stripe covering `[offset, offset + len)` that this set
    /// does not hold yet (a stripe held exclusively already satisfies it), in ascending stripe
    /// order.
    ///
    /// On [`Conflict`], the locks taken by this call are released again, so the set (and the
    /// table) are exactly as before the call; the caller is expected to abort and call
    /// [`LockSet::release_all`].
    ///
    /// # Panics
    ///
    /// If the set holds locks of another table.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Conflict, LockSet, LockTable, Mode};
    ///
    /// let table = LockTable::new(64);
    /// let (mut a, mut b) = (LockSet::new(), LockSet::new());
    /// a.lock_shared(&table, 0, 512)?; // two stripes
    /// b.lock_shared(&table, 256, 8)?; // readers share
    /// assert!(a.holds(&table, 0, 512, Mode::Shared));
    /// assert!(!a.holds(&table, 0, 512, Mode::Exclusive));
    /// a.release_all(&table);
    /// b.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    #[inline]
    pub fn lock_shared(
        &mut self,
        table: &LockTable,
        offset: u64,
        len: u64,
    ) -> Result<(), Conflict> {
        match table.one_stripe(offset, len) {
            Some(k) => self.lock_one_shared(table, k),
            None => self.lock_shared_many(table, offset, len),
        }
    }

    /// [`LockSet::lock_shared`] of the one stripe `k`.
    #[inline]
    fn lock_one_shared(&mut self, table: &LockTable, k: usize) -> Result<(), Conflict> {
        let i = match self.held.last() {
            None => {
                // The first lock of a transaction (the only one of a small read-only
                // transaction): nothing to search, any table will do.
                table.acquire(k, Op::Shared)?;
                self.held.push((k as u32, Mode::Shared));
                self.table = table.id;
                return Ok(());
            }
            // Past every held stripe: appended without a search.
            Some(&(last, _)) if k > last as usize => self.held.len(),
            Some(_) => match self.held.binary_search_by_key(&k, |&(s, _)| s as usize) {
                // Held shared or exclusively: either will do.
                Ok(_) => {
                    self.check(table);
                    return Ok(());
                }
                Err(i) => i,
            },
        };
        self.check(table);
        table.acquire(k, Op::Shared)?;
        self.held.insert(i, (k as u32, Mode::Shared));
        Ok(())
    }

    /// [`LockSet::lock_shared`] of a range that is empty or covers several stripes.
    #[inline(never)]
    fn lock_shared_many(
        &mut self,
        table: &LockTable,
        offset: u64,
        len: u64,
    ) -> Result<(), Conflict> {
        self.check(table);
        let (low, high) = table.ranges(offset, len);
        let base = self.held.len();
        for k in low.chain(high) {
            if self.find(base, k).is_some() {
                continue;
            }
            if let Err(conflict) = table.acquire(k, Op::Shared) {
                for &(s, _) in &self.held[base..] {
                    table.release_shared(s as usize);
                }
                self.held.truncate(base);
                return Err(conflict);
            }
            self.held.push((k as u32, Mode::Shared));
        }
        self.merge(base, table);
        Ok(())
    }

    /// Takes an exclusive lock on every stripe covering `[offset, offset + len)`, in ascending
    /// stripe order. A stripe held exclusively already is left alone; a stripe this set holds
    /// shared is upgraded, which succeeds only once this set is its only reader (waiting
    /// within the budget: two upgraders of one stripe both end in [`Conflict`] rather than
    /// deadlock).
    ///
    /// On [`Conflict`], the stripes newly locked by this call are released and the upgrades
    /// made by this call are downgraded back to shared, so the set (and the table) are exactly
    /// as before the call; the caller is expected to abort and call
    /// [`LockSet::release_all`].
    ///
    /// # Panics
    ///
    /// If the set holds locks of another table.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Budget, Conflict, LockSet, LockTable, Mode};
    ///
    /// let table = LockTable::with_budget(64, Budget { spins: 0, yields: 0 });
    /// let (mut a, mut b) = (LockSet::new(), LockSet::new());
    /// a.lock_shared(&table, 0, 8)?;
    /// a.lock_exclusive(&table, 0, 8)?; // the only reader: upgraded in place
    /// assert!(a.holds(&table, 0, 8, Mode::Exclusive));
    /// assert_eq!(a.len(), 1);
    /// assert_eq!(b.lock_exclusive(&table, 0, 8), Err(Conflict)); // b gives up
    /// assert!(b.is_empty()); // exactly as before the failed call
    /// a.release_all(&table);
    /// b.lock_exclusive(&table, 0, 8)?; // free now
    /// b.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    pub fn lock_exclusive(
        &mut self,
        table: &LockTable,
        offset: u64,
        len: u64,
    ) -> Result<(), Conflict> {
        self.check(table);
        if let Some(k) = table.one_stripe(offset, len) {
            return self.lock_one(table, k, Mode::Exclusive);
        }
        let (low, high) = table.ranges(offset, len);
        let base = self.held.len();
        let stripes = low.chain(high);
        // Whether this call upgraded a stripe: the entries of upgraded stripes still say
        // Shared until the call succeeds.
        let mut upgraded = false;
        for k in stripes.clone() {
            let result = match self.find(base, k) {
                Some(i) if self.held[i].1 == Mode::Exclusive => continue,
                Some(_) => table.acquire(k, Op::Upgrade).map(|()| upgraded = true),
                None => table.acquire(k, Op::Exclusive).map(|()| {
                    self.held.push((k as u32, Mode::Exclusive));
                }),
            };
            if let Err(conflict) = result {
                if upgraded {
                    for j in stripes.clone().take_while(|&j| j != k) {
                        if let Some(i) = self.find(base, j) {
                            if self.held[i].1 == Mode::Shared {
                                table.downgrade(j);
                            }
                        }
                    }
                }
                for &(s, _) in &self.held[base..] {
                    table.release_exclusive(s as usize);
                }
                self.held.truncate(base);
                return Err(conflict);
            }
        }
        if upgraded {
            for k in stripes {
                if let Some(i) = self.find(base, k) {
                    self.held[i].1 = Mode::Exclusive;
                }
            }
        }
        self.merge(base, table);
        Ok(())
    }

    /// Whether every stripe covering `[offset, offset + len)` is held in at least `mode`
    /// (`true` for `len == 0`).
    ///
    /// # Panics
    ///
    /// If the set holds locks of another table.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Conflict, LockSet, LockTable, Mode};
    ///
    /// let table = LockTable::new(64);
    /// let mut set = LockSet::new();
    /// set.lock_exclusive(&table, 0, 256)?;
    /// assert!(set.holds(&table, 0, 256, Mode::Shared)); // exclusive counts as shared
    /// assert!(!set.holds(&table, 0, 257, Mode::Shared)); // the next stripe is not held
    /// assert!(set.holds(&table, 9999, 0, Mode::Exclusive)); // an empty range
    /// set.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    pub fn holds(&self, table: &LockTable, offset: u64, len: u64, mode: Mode) -> bool {
        self.check(table);
        let all = self.held.len();
        table
            .stripes_for(offset, len)
            .all(|k| match self.find(all, k) {
                Some(i) => mode == Mode::Shared || self.held[i].1 == Mode::Exclusive,
                None => false,
            })
    }

    /// Releases every lock of the set (with `Release` ordering), leaving it empty.
    ///
    /// # Panics
    ///
    /// If the set holds locks of another table than `table`.
    ///
    /// # Examples
    ///
    /// ```
    /// use pmstore_tx::locks::{Budget, Conflict, LockSet, LockTable};
    ///
    /// let table = LockTable::with_budget(64, Budget { spins: 0, yields: 0 });
    /// let (mut a, mut b) = (LockSet::new(), LockSet::new());
    /// a.lock_exclusive(&table, 0, 1024)?;
    /// a.release_all(&table);
    /// assert!(a.is_empty());
    /// b.lock_exclusive(&table, 0, 1024)?; // every stripe free again
    /// b.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    #[inline]
    pub fn release_all(&mut self, table: &LockTable) {
        if self.held.is_empty() {
            return;
        }
        self.check(table);
        for &(s, mode) in self.held.iter() {
            match mode {
                Mode::Shared => table.release_shared(s as usize),
                Mode::Exclusive => table.release_exclusive(s as usize),
            }
        }
        self.held.clear();
    }

    /// The number of stripes held.
    ///
    /// ```
    /// use pmstore_tx::locks::{Conflict, LockSet, LockTable};
    ///
    /// let table = LockTable::new(64);
    /// let mut set = LockSet::new();
    /// set.lock_shared(&table, 0, 1024)?; // four 256-byte stripes
    /// set.lock_exclusive(&table, 0, 8)?; // upgrades one: still four
    /// assert_eq!(set.len(), 4);
    /// set.release_all(&table);
    /// # Ok::<(), Conflict>(())
    /// ```
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the set holds no lock.
    ///
    /// ```
    /// use pmstore_tx::locks::{Conflict, LockSet, LockTable};
    ///
    /// let table = LockTable::new(64);
    /// let mut set = LockSet::new();
    /// set.lock_shared(&table, 0, 8)?;
    /// assert!(!set.is_empty());
    /// set.release_all(&table);
    /// assert!(set.is_empty());
    /// # Ok::<(), Conflict>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Panics if the set holds locks of a table other than `table`.
    fn check(&self, table: &LockTable) {
        assert!(
            self.held.is_empty() || self.table == table.id,
            "LockSet used with a LockTable other than the one whose locks it holds"
        );
    }

    /// [`LockSet::lock_shared`] or [`LockSet::lock_exclusive`] (`mode`) of the one stripe `k`
    /// (the common case of a small object, without the bookkeeping of several stripes): the
    /// same outcome, entries included.
    fn lock_one(&mut self, table: &LockTable, k: usize, mode: Mode) -> Result<(), Conflict> {
        match self.held.binary_search_by_key(&k, |&(s, _)| s as usize) {
            Ok(i) => {
                if mode == Mode::Exclusive && self.held[i].1 == Mode::Shared {
                    table.acquire(k, Op::Upgrade)?;
                    self.held[i].1 = Mode::Exclusive;
                }
            }
            Err(i) => {
                let op = match mode {
                    Mode::Shared => Op::Shared,
                    Mode::Exclusive => Op::Exclusive,
                };
                table.acquire(k, op)?;
                self.held.insert(i, (k as u32, mode));
                self.table = table.id;
            }
        }
        Ok(())
    }

    /// The index of stripe `k` among the first `base` (sorted) entries.
    fn find(&self, base: usize, k: usize) -> Option<usize> {
        self.held[..base]
            .binary_search_by_key(&k, |&(s, _)| s as usize)
            .ok()
    }

    /// Sorts the entries added after `base` (ascending themselves, disjoint from the sorted
    /// prefix) into place and records the table, after a successful call.
    fn merge(&mut self, base: usize, table: &LockTable) {
        if self.held.len() == base {
            return;
        }
        self.table = table.id;
        if base > 0 && self.held[base - 1].0 > self.held[base].0 {
            // Two sorted runs: the stable sort merges them in linear time.
            self.held.sort_by_key(|&(s, _)| s);
        }
    }
}

impl Drop for LockSet {
    fn drop(&mut self) {
        // (`cfg!`: not even the panicking check in release builds, where a read-only
        // transaction's whole drop is a few instructions.)
        if cfg!(debug_assertions) && !std::thread::panicking() {
            debug_assert!(
                self.held.is_empty(),
                "LockSet dropped while holding {} stripe locks: call release_all first",
                self.held.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::{Duration, Instant};

    const S: u64 = 1 << STRIPE_SHIFT;

    /// A budget that tries once.
    const NOW: Budget = Budget {
        spins: 0,
        yields: 0,
    };

    fn words(t: &LockTable) -> Vec<u32> {
        (0..t.stripes()).map(|k| t.raw(k)).collect()
    }

    fn stripes(t: &LockTable, offset: u64, len: u64) -> Vec<usize> {
        t.stripes_for(offset, len).collect()
    }

    #[test]
    fn stripes_for_ranges() {
        let t = LockTable::new(8);
        assert_eq!(t.stripes(), 8);
        assert_eq!(stripes(&t, 0, 0), Vec::<usize>::new());
        assert_eq!(stripes(&t, 1000, 0), Vec::<usize>::new());
        assert_eq!(stripes(&t, 0, 1), vec![0]);
        assert_eq!(stripes(&t, 0, S), vec![0]);
        assert_eq!(stripes(&t, S - 1, 1), vec![0]);
        assert_eq!(stripes(&t, S - 1, 2), vec![0, 1]);
        assert_eq!(stripes(&t, 10, 3 * S), vec![0, 1, 2, 3]);
        assert_eq!(stripes(&t, 2 * S, 3 * S), vec![2, 3, 4]);
        // Offsets past the table map modulo the stripe count.
        assert_eq!(stripes(&t, 9 * S + 5, S), vec![1, 2]);
        // Wrap-around at the table end: low stripes first.
        assert_eq!(stripes(&t, 7 * S + 100, 300), vec![0, 7]);
        assert_eq!(stripes(&t, 6 * S, 4 * S), vec![0, 1, 6, 7]);
        assert_eq!(stripes(&t, 15 * S + 1, 2 * S), vec![0, 1, 7]);
        // Exactly the table (aligned), one byte more, or much more: every stripe once.
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(stripes(&t, 0, 8 * S), all);
        assert_eq!(stripes(&t, 3 * S, 8 * S), all);
        assert_eq!(stripes(&t, 3 * S + 1, 8 * S), all);
        assert_eq!(stripes(&t, 5, 1 << 40), all);
        assert_eq!(stripes(&t, 0, 7 * S), (0..7).collect::<Vec<_>>());
        // Near the end of the address space: cut at u64::MAX, no overflow.
        assert_eq!(stripes(&t, u64::MAX, 1), vec![7]);
        assert_eq!(stripes(&t, u64::MAX - S, u64::MAX), vec![6, 7]);
        assert_eq!(stripes(&t, 0, u64::MAX), all);
        // One-stripe table.
        let one = LockTable::new(1);
        assert_eq!(stripes(&one, 12345, 1), vec![0]);
        assert_eq!(stripes(&one, 12345, 1 << 20), vec![0]);
        assert_eq!(stripes(&one, 12345, 0), Vec::<usize>::new());
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn zero_stripes_panics() {
        let _ = LockTable::new(0);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn non_power_of_two_panics() {
        let _ = LockTable::new(12);
    }

    #[test]
    fn shared_locks_coexist() {
        let t = LockTable::with_budget(8, NOW);
        let (mut a, mut b) = (LockSet::new(), LockSet::new());
        a.lock_shared(&t, 0, 2 * S).unwrap();
        b.lock_shared(&t, S, 2 * S).unwrap();
        assert_eq!(words(&t)[..4], [1, 2, 1, 0]);
        assert!(a.holds(&t, 0, 2 * S, Mode::Shared));
        assert!(!a.holds(&t, 0, 2 * S, Mode::Exclusive));
        assert!(!a.holds(&t, 0, 3 * S, Mode::Shared));
        assert!(a.holds(&t, 0, 0, Mode::Exclusive));
        assert_eq!((a.len(), b.len()), (2, 2));
        a.release_all(&t);
        b.release_all(&t);
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(words(&t), [0; 8]);
    }

    #[test]
    fn shared_blocks_exclusive_and_back() {
        let t = LockTable::with_budget(8, NOW);
        let (mut r, mut w) = (LockSet::new(), LockSet::new());
        r.lock_shared(&t, 3 * S, 1).unwrap();
        assert_eq!(w.lock_exclusive(&t, 3 * S + 7, 1), Err(Conflict));
        assert!(w.is_empty());
        r.release_all(&t);
        w.lock_exclusive(&t, 3 * S + 7, 1).unwrap();
        assert_eq!(t.raw(3), EXCLUSIVE);
        assert_eq!(r.lock_shared(&t, 3 * S, 1), Err(Conflict));
        assert_eq!(r.lock_exclusive(&t, 3 * S, 1), Err(Conflict));
        assert!(r.is_empty());
        assert!(w.holds(&t, 3 * S, S, Mode::Exclusive));
        assert!(w.holds(&t, 3 * S, S, Mode::Shared));
        w.release_all(&t);
        assert_eq!(words(&t), [0; 8]);
        r.lock_shared(&t, 3 * S, 1).unwrap();
        r.release_all(&t);
    }

    #[test]
    fn aliasing_stripes_conflict() {
        // Offsets one table apart share a stripe.
        let t = LockTable::with_budget(4, NOW);
        let (mut a, mut b) = (LockSet::new(), LockSet::new());
        a.lock_exclusive(&t, S, 1).unwrap();
        assert_eq!(b.lock_shared(&t, 5 * S, 1), Err(Conflict));
        a.release_all(&t);
    }

    #[test]
    fn relocking_is_a_noop() {
        let t = LockTable::with_budget(8, NOW);
        let mut a = LockSet::new();
        a.lock_shared(&t, 0, S).unwrap();
        a.lock_shared(&t, 0, S).unwrap();
        assert_eq!(t.raw(0), 1);
        a.lock_exclusive(&t, S, S).unwrap();
        a.lock_exclusive(&t, S, S).unwrap();
        // Exclusive satisfies shared.
        a.lock_shared(&t, S, S).unwrap();
        assert_eq!(t.raw(1), EXCLUSIVE);
        assert_eq!(a.len(), 2);
        // Mixed: 0 held shared (upgraded), 1 exclusive (kept), 2 new.
        a.lock_exclusive(&t, 0, 3 * S).unwrap();
        assert_eq!(words(&t)[..4], [EXCLUSIVE, EXCLUSIVE, EXCLUSIVE, 0]);
        assert_eq!(a.len(), 3);
        assert!(a.holds(&t, 0, 3 * S, Mode::Exclusive));
        a.release_all(&t);
        assert_eq!(words(&t), [0; 8]);
    }

    #[test]
    fn upgrade_as_sole_reader() {
        let t = LockTable::with_budget(8, NOW);
        let mut a = LockSet::new();
        a.lock_shared(&t, 2 * S, 2 * S).unwrap();
        a.lock_exclusive(&t, 2 * S, 1).unwrap();
        assert_eq!(words(&t)[2..4], [EXCLUSIVE, 1]);
        assert!(a.holds(&t, 2 * S, S, Mode::Exclusive));
        assert!(!a.holds(&t, 2 * S, 2 * S, Mode::Exclusive));
        assert!(a.holds(&t, 2 * S, 2 * S, Mode::Shared));
        assert_eq!(a.len(), 2);
        a.release_all(&t);
        assert_eq!(words(&t), [0; 8]);
    }

    #[test]
    fn upgrade_with_another_reader_conflicts() {
        let t = LockTable::with_budget(8, NOW);
        let (mut a, mut b) = (LockSet::new(), LockSet::new());
        a.lock_shared(&t, 0, 1).unwrap();
        b.lock_shared(&t, 0, 1).unwrap();
        assert_eq!(a.lock_exclusive(&t, 0, 1), Err(Conflict));
        assert_eq!(b.lock_exclusive(&t, 0, 1), Err(Conflict));
        assert_eq!(t.raw(0), 2);
        assert!(a.holds(&t, 0, 1, Mode::Shared));
        assert!(!a.holds(&t, 0, 1, Mode::Exclusive));
        assert_eq!(a.len(), 1);
        b.release_all(&t);
        a.lock_exclusive(&t, 0, 1).unwrap();
        assert_eq!(t.raw(0), EXCLUSIVE);
        a.release_all(&t);
        assert_eq!(t.raw(0), 0);
    }

    #[test]
    fn failed_exclusive_restores_everything() {
        let t = LockTable::with_budget(8, NOW);
        let (mut a, mut b) = (LockSet::new(), LockSet::new());
        a.lock_shared(&t, S, 1).unwrap(); // 1: shared, will be upgraded
        a.lock_exclusive(&t, 2 * S, 1).unwrap(); // 2: exclusive already
        a.lock_shared(&t, 6 * S, 1).unwrap(); // 6: shared, past the failure point
        b.lock_shared(&t, 4 * S, 1).unwrap(); // 4: the obstacle
        b.lock_shared(&t, 6 * S, 1).unwrap();
        let before = words(&t);
        assert_eq!(before, [0, 1, EXCLUSIVE, 0, 1, 0, 2, 0]);
        // Wraps: stripes 0, 1, 2, 3, 4, 5, 6, 7 — 0 new, 1 upgraded, 2 kept, 3 new, 4 fails.
        assert_eq!(a.lock_exclusive(&t, 0, 8 * S), Err(Conflict));
        assert_eq!(words(&t), before);
        assert_eq!(a.len(), 3);
        assert!(a.holds(&t, S, 1, Mode::Shared));
        assert!(!a.holds(&t, S, 1, Mode::Exclusive));
        assert!(a.holds(&t, 2 * S, 1, Mode::Exclusive));
        assert!(!a.holds(&t, 0, 1, Mode::Shared));
        assert!(!a.holds(&t, 3 * S, 1, Mode::Shared));
        // A wrapping range fails the same way (stripes 0, 1, then 5, 6, 7: 6 has a reader).
        assert_eq!(a.lock_exclusive(&t, 5 * S, 5 * S - 10), Err(Conflict));
        assert_eq!(words(&t), before);
        // A third set can take what the failed calls released.
        let mut c = LockSet::new();
        c.lock_exclusive(&t, 0, 1).unwrap();
        c.lock_exclusive(&t, 3 * S, 1).unwrap();
        c.lock_exclusive(&t, 5 * S, 1).unwrap();
        c.lock_exclusive(&t, 7 * S, 1).unwrap();
        c.release_all(&t);
        // A failing lock_shared over several stripes too.
        let mut d = LockSet::new();
        d.lock_shared(&t, 0, 1).unwrap();
        assert_eq!(d.lock_shared(&t, S, 4 * S), Err(Conflict)); // 1, 3 ok; 2 exclusive
        assert_eq!(d.len(), 1);
        d.release_all(&t);
        assert_eq!(words(&t), before);
        b.release_all(&t);
        assert_eq!(a.lock_exclusive(&t, 0, 8 * S), Ok(()));
        assert_eq!(words(&t), [EXCLUSIVE; 8]);
        assert_eq!(a.len(), 8);
        a.release_all(&t);
        assert_eq!(words(&t), [0; 8]);
    }

    #[test]
    fn held_entries_stay_sorted() {
        let t = LockTable::with_budget(16, NOW);
        let mut a = LockSet::new();
        a.lock_shared(&t, 9 * S, 2 * S).unwrap();
        a.lock_exclusive(&t, 2 * S, S).unwrap();
        a.lock_shared(&t, 14 * S, 4 * S).unwrap(); // 14, 15, 0, 1
        a.lock_exclusive(&t, 5 * S, 1).unwrap();
        let held: Vec<u32> = a.held.iter().map(|e| e.0).collect();
        assert_eq!(held, [0, 1, 2, 5, 9, 10, 14, 15]);
        assert!(a.holds(&t, 14 * S, 4 * S, Mode::Shared));
        assert!(a.holds(&t, 2 * S, 1, Mode::Exclusive));
        a.lock_exclusive(&t, 0, 16 * S).unwrap();
        assert_eq!(a.len(), 16);
        a.release_all(&t);
        assert_eq!(words(&t), [0; 16]);
    }

    #[test]
    fn release_all_frees_everything() {
        let t = LockTable::with_budget(8, NOW);
        let mut a = LockSet::new();
        a.lock_shared(&t, 0, 3 * S).unwrap();
        a.lock_exclusive(&t, 5 * S, 2 * S).unwrap();
        a.lock_exclusive(&t, S, 1).unwrap();
        assert_eq!(a.len(), 5);
        a.release_all(&t);
        assert!(a.is_empty());
        assert_eq!(words(&t), [0; 8]);
        // Releasing an empty set is a no-op, and the set is reusable with another table.
        a.release_all(&t);
        let u = LockTable::with_budget(8, NOW);
        a.lock_exclusive(&u, 0, 8 * S).unwrap();
        let mut b = LockSet::new();
        b.lock_exclusive(&t, 0, 8 * S).unwrap();
        a.release_all(&u);
        b.release_all(&t);
    }

    #[test]
    fn reader_count_saturation_is_busy() {
        let t = LockTable::with_budget(1, NOW);
        t.words[0].store(MAX_READERS, Ordering::Relaxed);
        let mut a = LockSet::new();
        assert_eq!(a.lock_shared(&t, 0, 1), Err(Conflict));
        assert_eq!(t.raw(0), MAX_READERS);
        t.words[0].store(MAX_READERS - 1, Ordering::Relaxed);
        a.lock_shared(&t, 0, 1).unwrap();
        assert_eq!(t.raw(0), MAX_READERS);
        a.release_all(&t);
        assert_eq!(t.raw(0), MAX_READERS - 1);
    }

    #[test]
    #[should_panic(expected = "other than the one")]
    fn another_table_panics() {
        let (t, u) = (LockTable::new(8), LockTable::new(8));
        let mut a = LockSet::new();
        a.lock_shared(&t, 0, 1).unwrap();
        // Leak the lock on `t` deliberately; the Drop assertion is skipped while panicking.
        a.release_all(&u);
    }

    #[test]
    fn waits_for_a_transient_holder() {
        let t = LockTable::with_budget(
            8,
            Budget {
                spins: 64,
                yields: u32::MAX,
            },
        );
        let mut holder = LockSet::new();
        holder.lock_exclusive(&t, 0, 1).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut w = LockSet::new();
                w.lock_exclusive(&t, 0, 1).unwrap();
                assert!(done.load(std::sync::atomic::Ordering::Relaxed));
                w.release_all(&t);
            });
            std::thread::sleep(Duration::from_millis(5));
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            holder.release_all(&t);
        });
        assert_eq!(words(&t), [0; 8]);
    }

    #[test]
    fn default_budget_gives_up() {
        let t = LockTable::new(DEFAULT_STRIPES);
        assert_eq!(t.budget(), Budget::default());
        let (mut a, mut b) = (LockSet::new(), LockSet::new());
        a.lock_exclusive(&t, 0, 1).unwrap();
        let start = Instant::now();
        assert_eq!(b.lock_shared(&t, 0, 1), Err(Conflict));
        assert!(start.elapsed() < Duration::from_secs(1));
        a.release_all(&t);
    }

    /// Plain memory shared between threads; every access is made under a stripe lock.
    struct Racy(UnsafeCell<[u64; 2]>);

    // SAFETY: the test only touches the cell while holding the stripe locks covering it:
    // shared for reads, exclusive for writes; the lock table orders those accesses.
    unsafe impl Sync for Racy {}

    #[test]
    fn stress_counter() {
        const THREADS: u64 = 4;
        const ITERS: u64 = 10_000;
        let t = LockTable::new(16);
        let cell = Racy(UnsafeCell::new([0, 0]));
        let writes = AtomicU64::new(0);
        // The two counters live at offsets 3 * S and 4 * S + 8 (two stripes); every write
        // increments both, every read checks they are equal.
        let start = Instant::now();
        std::thread::scope(|s| {
            for th in 0..THREADS {
                let (t, cell, writes) = (&t, &cell, &writes);
                s.spawn(move || {
                    let mut set = LockSet::new();
                    let mut done = 0;
                    for i in 0..ITERS {
                        // Ranges differ per thread but all cover stripes 3 and 4; one wraps
                        // (13, 14, 15, 0, ..., 4).
                        let (offset, len) = [
                            (2 * S + 9, 2 * S + 7),
                            (3 * S, 2 * S),
                            (3 * S + 100, 2 * S),
                            (13 * S, 8 * S),
                        ][th as usize];
                        loop {
                            let r = match (th + i) % 4 {
                                // read only
                                0 => set.lock_shared(t, offset, len).map(|()| false),
                                // read, then upgrade
                                1 => set
                                    .lock_shared(t, offset, len)
                                    .and_then(|()| set.lock_exclusive(t, offset, len))
                                    .map(|()| true),
                                _ => set.lock_exclusive(t, offset, len).map(|()| true),
                            };
                            match r {
                                Ok(write) => {
                                    assert!(set.holds(t, 3 * S, 2 * S, Mode::Shared));
                                    let p = cell.0.get();
                                    if write {
                                        assert!(set.holds(t, 3 * S, 2 * S, Mode::Exclusive));
                                        // SAFETY: this set holds stripes 3 and 4 exclusively.
                                        unsafe {
                                            (*p)[0] += 1;
                                            (*p)[1] += 1;
                                        }
                                        done += 1;
                                    } else {
                                        // SAFETY: this set holds stripes 3 and 4 shared.
                                        let [a, b] = unsafe { *p };
                                        assert_eq!(a, b);
                                    }
                                    set.release_all(t);
                                    break;
                                }
                                Err(Conflict) => {
                                    set.release_all(t);
                                    yield_now();
                                }
                            }
                        }
                    }
                    writes.fetch_add(done, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        let total = writes.into_inner();
        assert_eq!(total, THREADS * ITERS * 3 / 4);
        assert_eq!(cell.0.into_inner(), [total, total]);
        assert_eq!(words(&t), [0; 16]);
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}

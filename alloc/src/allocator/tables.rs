//! The chunk allocator's object table and the arenas' run lists (volatile state of
//! [`Heap`]), split from `allocator.rs` to keep files by concept.

use super::*;

/// The runs and spans of the scanned chunks, indexed by chunk: finding the object that
/// covers a chunk (every free and `usable_size`) is two array reads, not a tree search, and
/// opening or releasing a run writes its chunks' entries instead of rebalancing a tree. Sized
/// to the frontier (every object lies below it): a few bytes per 256 KiB chunk.
#[derive(Debug, Default)]
pub(super) struct ObjTable {
    /// Per chunk: the first chunk of the run or span covering it, plus one (0: none).
    cover: Vec<u32>,
    /// Per chunk: the run or span starting there.
    starts: Vec<Option<Obj>>,
}

impl ObjTable {
    /// Makes room for chunks `[0, frontier)`.
    pub(super) fn grow(&mut self, frontier: u32) {
        let n = frontier as usize;
        if self.cover.len() < n {
            self.cover.resize(n, 0);
            self.starts.resize(n, None);
        }
    }

    pub(super) fn insert(&mut self, start: u32, obj: Obj) {
        let (s, len) = (start as usize, obj.len() as usize);
        self.cover[s..s + len].fill(start + 1);
        self.starts[s] = Some(obj);
    }

    pub(super) fn remove(&mut self, start: u32) {
        if let Some(obj) = self.starts[start as usize].take() {
            let s = start as usize;
            self.cover[s..s + obj.len() as usize].fill(0);
        }
    }

    pub(super) fn get(&self, start: u32) -> Option<&Obj> {
        self.starts.get(start as usize)?.as_ref()
    }

    /// The run or span covering `chunk` (scanned), and its first chunk.
    pub(super) fn covering(&self, chunk: u32) -> Option<(u32, &Obj)> {
        let s = self.cover.get(chunk as usize)?.checked_sub(1)?;
        Some((s, self.get(s)?))
    }

    /// Every run and span, in chunk order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Obj)> {
        self.starts
            .iter()
            .enumerate()
            .filter_map(|(s, o)| Some((s as u32, o.as_ref()?)))
    }
}

/// One arena: per class, the runs to allocate from (the last one first), and released runs'
/// volatile state kept for the class's next new run.
#[derive(Debug)]
pub(super) struct Arena {
    pub(super) runs: Vec<Vec<Arc<Run>>>,
    /// Released runs no one else refers to: a run emptied by a free is released, and the next
    /// allocation of its class opens a new one (an alloc/free pair does both every time), so
    /// reusing the `Run` and its bitmap vectors saves three heap allocations and frees.
    pub(super) spare: Vec<Vec<Arc<Run>>>,
}

/// Spare runs kept per class and arena.
const SPARE_RUNS: usize = 2;

impl std::ops::Index<usize> for Arena {
    type Output = Vec<Arc<Run>>;
    fn index(&self, class: usize) -> &Vec<Arc<Run>> {
        &self.runs[class]
    }
}

impl std::ops::IndexMut<usize> for Arena {
    fn index_mut(&mut self, class: usize) -> &mut Vec<Arc<Run>> {
        &mut self.runs[class]
    }
}

impl Arena {
    /// Pops the last run of class `ci` (`dead`, else full), keeping it as a spare if it is dead
    /// and nothing else refers to it (a dead run is never reached again through the heap: it
    /// left the object table when it was released).
    pub(super) fn pop_run(&mut self, ci: usize, dead: bool) {
        if let Some(run) = self.runs[ci].pop() {
            if dead && Arc::strong_count(&run) == 1 && self.spare[ci].len() < SPARE_RUNS {
                self.spare[ci].push(run);
            }
        }
    }

    /// A volatile-only run of class `c` at chunk `start` with every block free: a spare one
    /// if it is still unshared (`Arc::get_mut`), else a new one.
    pub(super) fn new_run(&mut self, start: u32, c: &'static SizeClass) -> Arc<Run> {
        let ci = usize::from(c.id);
        while let Some(mut spare) = self.spare[ci].pop() {
            // Unshared: no lock needed (nor taken, which would be against the lock order: the
            // caller holds the chunk allocator's).
            if let Some(run) = Arc::get_mut(&mut spare) {
                let st = run.state.get_mut().unwrap_or_else(|e| e.into_inner());
                let Some(bits) = st.bits.as_mut() else {
                    continue;
                };
                bits.clear();
                st.on_media = false;
                st.dead = false;
                st.listed = true;
                debug_assert_eq!(st.kept, 0, "a released run was uncharged");
                run.start = start;
                return spare;
            }
        }
        Arc::new(Run {
            start,
            class: c,
            state: Mutex::new(RunState {
                bits: Some(RunBits::empty(c.blocks)),
                on_media: false,
                dead: false,
                listed: true,
                kept: 0,
            }),
        })
    }
}

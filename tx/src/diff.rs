//! A commit's diff: which lines of a transaction's shadows it logs (`docs/TX.md`).

use pmstore_alloc::redo::RedoRange;
use pmstore_alloc::Reservation;
use pmstore_pool::CACHE_LINE;
use smallvec::SmallVec;

use crate::tx::Line;

/// The ranges a commit logs (inline: a small transaction's commit allocates nothing).
pub(crate) type Ranges<'a> = SmallVec<[RedoRange<'a>; 8]>;

/// Pushes to `ranges` the spans of consecutive lines of a shadow (`mine`, of pool lines
/// `start..`) that differ from the pool's (`current`) or hold a word of a block allocated by
/// the transaction (`fresh`). For a shadow that overlaps no freed block this is exactly what
/// [`diff_words`] yields: a run of changed words never spans a line without a changed word
/// (runs merge over gaps of at most 16 bytes), so the runs widened to whole lines and merged
/// are those spans, and a whole line is compared at once.
#[inline] // (one call site, the commit's hot loop)
pub(crate) fn diff_lines<'a>(
    start: u64,
    mine: &'a [Line],
    current: &[u8],
    fresh: &[Reservation],
    ranges: &mut Ranges<'a>,
) {
    const LINE: usize = CACHE_LINE as usize;
    let bytes: &'a [u8] = bytemuck::cast_slice(mine);
    let mut run: Option<usize> = None;
    for (i, (line, pool_line)) in mine.iter().zip(current.chunks_exact(LINE)).enumerate() {
        let at = i * LINE;
        let same = <&[u8; LINE]>::try_from(pool_line).is_ok_and(|p| line.0 == *p);
        let dirty = !same
            || fresh
                .iter()
                .any(|r| line_holds_word_of(start + at as u64, (r.offset(), r.size())));
        match (dirty, run) {
            (true, None) => run = Some(at),
            (false, Some(a)) => {
                ranges.push(RedoRange {
                    target: start + a as u64,
                    data: &bytes[a..at],
                });
                run = None;
            }
            _ => {}
        }
    }
    if let Some(a) = run {
        ranges.push(RedoRange {
            target: start + a as u64,
            data: &bytes[a..],
        });
    }
}

/// Whether the cache line at `line` holds the start of an 8-byte word of the block
/// `(offset, size)` (the word-granular test of [`diff_words`], for a whole line).
#[inline]
fn line_holds_word_of(line: u64, (offset, size): (u64, u64)) -> bool {
    let first = line.max(offset.next_multiple_of(8));
    first < line + CACHE_LINE && first < offset + size
}

/// [`diff_lines`] for a shadow (`bytes`, of pool bytes `start..`) that overlaps blocks freed
/// by the transaction (`dead`), word by word: runs of changed words (and words of `fresh`
/// blocks) less than 16 bytes apart are merged and widened to whole lines, but never over a
/// dead word.
pub(crate) fn diff_words<'a>(
    start: u64,
    bytes: &'a [u8],
    current: &[u8],
    dead: &[(u64, u64)],
    fresh: &[Reservation],
    ranges: &mut Ranges<'a>,
) {
    const LINE: usize = CACHE_LINE as usize;
    let word_at = |g: usize| start + g as u64;
    let dead_at = |g: usize| {
        dead.iter()
            .any(|&(o, s)| o <= word_at(g) && word_at(g) < o + s)
    };
    let fresh_at = |g: usize| {
        (fresh.iter()).any(|r| r.offset() <= word_at(g) && word_at(g) < r.offset() + r.size())
    };
    let mut runs: SmallVec<[(usize, usize); 8]> = SmallVec::new();
    let mut run: Option<(usize, usize)> = None;
    for g in (0..bytes.len()).step_by(8) {
        if dead_at(g) {
            runs.extend(run.take());
            continue;
        }
        if !fresh_at(g) && bytes[g..g + 8] == current[g..g + 8] {
            continue;
        }
        run = match run {
            Some((a, b)) if g - b <= 16 => Some((a, g + 8)),
            Some(r) => {
                runs.push(r);
                Some((g, g + 8))
            }
            None => Some((g, g + 8)),
        };
    }
    runs.extend(run);
    // Widen to line edges (never over a dead word), merging what then overlaps.
    let mut last: Option<(usize, usize)> = None;
    for &(mut a, mut b) in runs.iter() {
        while a % LINE != 0 && !dead_at(a - 8) {
            a -= 8;
        }
        while b % LINE != 0 && !dead_at(b) {
            b += 8;
        }
        last = match last {
            Some((la, lb)) if a <= lb => Some((la, lb.max(b))),
            Some((la, lb)) => {
                ranges.push(RedoRange {
                    target: start + la as u64,
                    data: &bytes[la..lb],
                });
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((a, b)) = last {
        ranges.push(RedoRange {
            target: start + a as u64,
            data: &bytes[a..b],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line-wise diff logs exactly what the word-wise one does when nothing is freed.
    #[test]
    fn lines_match_words_without_dead_blocks() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let n = 1 + (next() % 6) as usize;
            let mut mine: Vec<Line> = (0..n).map(|_| Line([0; 64])).collect();
            let mut current = vec![0u8; 64 * n];
            // A few changed words, clustered or apart.
            for _ in 0..(next() % 5) {
                let w = (next() % (8 * n as u64)) as usize;
                mine[w / 8].0[(w % 8) * 8] = 1 + (next() % 255) as u8;
            }
            for (i, b) in current.iter_mut().enumerate() {
                *b = mine[i / 64].0[i % 64];
            }
            // Undo some changes in the pool copy so that they differ.
            for b in &mut current {
                if *b != 0 && next() % 2 == 0 {
                    *b = 0;
                }
            }
            let start = 4096 * (1 + next() % 100);
            let (mut a, mut b): (Ranges<'_>, Ranges<'_>) = (SmallVec::new(), SmallVec::new());
            diff_lines(start, &mine, &current, &[], &mut a);
            diff_words(
                start,
                bytemuck::cast_slice(&mine),
                &current,
                &[],
                &[],
                &mut b,
            );
            let key = |r: &Ranges<'_>| -> Vec<(u64, usize, usize)> {
                r.iter()
                    .map(|r| (r.target, r.data.as_ptr() as usize, r.data.len()))
                    .collect()
            };
            assert_eq!(key(&a), key(&b));
        }
    }

    #[test]
    fn line_holds_word_of_is_word_granular() {
        assert!(line_holds_word_of(128, (128, 8)));
        assert!(line_holds_word_of(128, (184, 8))); // the last word
        assert!(!line_holds_word_of(128, (192, 64))); // the next line
        assert!(!line_holds_word_of(128, (64, 64))); // the previous line
        assert!(line_holds_word_of(128, (0, 4096))); // spans it
        assert!(!line_holds_word_of(128, (189, 3))); // starts no word of the line
    }
}

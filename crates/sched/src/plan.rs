//! Splitting one effective batch into micro-batches.
//!
//! A step consumes exactly `total` samples. With a micro-batch limit `m` it runs
//! `k = ceil(total / m)` chunks whose sizes differ by at most one, larger chunks first:
//! 96 samples with `m = 64` are `[48, 48]`, not `[64, 32]`, because the peak memory of a step
//! is set by its largest chunk.
//!
//! Consequently only some limits are *achievable* for a given `total`: the largest chunk is
//! always `ceil(total / k)` for some `k` in `1..=total`. For `total = 64` these are
//! `64, 32, 22, 16, 13, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1`. The policy only ever holds achievable
//! limits, and steps between them with [`next_smaller`] and [`next_larger`].
//!
//! All functions treat a `limit` or size of `0` as `1`; a `total` of `0` has no chunks.

/// Ceiling division for positive divisors.
fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// The chunk sizes for one step of `total` samples under the micro-batch limit `limit`.
///
/// `ceil(total / limit)` chunks, sizes differing by at most one, larger first; they sum to
/// `total` and none exceeds `limit`. A `limit` of 0 is treated as 1; `total == 0` gives `[]`.
///
/// ```
/// use oomph_sched::plan::plan_chunks;
/// assert_eq!(plan_chunks(96, 64), vec![48, 48]);
/// assert_eq!(plan_chunks(10, 4), vec![4, 3, 3]);
/// assert_eq!(plan_chunks(8, 100), vec![8]);
/// ```
pub fn plan_chunks(total: usize, limit: usize) -> Vec<usize> {
    if total == 0 {
        return Vec::new();
    }
    let limit = limit.max(1);
    let k = div_ceil(total, limit);
    let base = total / k;
    let rem = total % k;
    (0..k).map(|i| if i < rem { base + 1 } else { base }).collect()
}

/// The largest chunk [`plan_chunks`] produces for `total` under `limit`:
/// `ceil(total / ceil(total / limit))`, the largest achievable size `<= limit`
/// (or `total` itself when `limit >= total`). Returns 0 when `total == 0`.
///
/// ```
/// use oomph_sched::plan::max_chunk;
/// assert_eq!(max_chunk(96, 64), 48);
/// assert_eq!(max_chunk(64, 12), 11);
/// assert_eq!(max_chunk(64, 1000), 64);
/// ```
pub fn max_chunk(total: usize, limit: usize) -> usize {
    if total == 0 {
        return 0;
    }
    let limit = limit.max(1);
    div_ceil(total, div_ceil(total, limit))
}

/// Whether `size` is an achievable micro-batch limit for `total`, i.e. the largest chunk of
/// some split of `total` into near-equal chunks (`1 <= size <= total`).
pub fn is_achievable(total: usize, size: usize) -> bool {
    size >= 1 && size <= total && max_chunk(total, size) == size
}

/// The largest achievable size strictly smaller than `size`, or `None` if there is none
/// (`size <= 1` or `total == 0`).
///
/// ```
/// use oomph_sched::plan::next_smaller;
/// assert_eq!(next_smaller(64, 13), Some(11));
/// assert_eq!(next_smaller(64, 1), None);
/// ```
pub fn next_smaller(total: usize, size: usize) -> Option<usize> {
    if total == 0 || size <= 1 {
        return None;
    }
    Some(max_chunk(total, size - 1))
}

/// The smallest achievable size strictly larger than `size`, or `None` if there is none
/// (`size >= total`).
///
/// ```
/// use oomph_sched::plan::next_larger;
/// assert_eq!(next_larger(64, 11), Some(13));
/// assert_eq!(next_larger(64, 33), Some(64));
/// assert_eq!(next_larger(64, 64), None);
/// ```
pub fn next_larger(total: usize, size: usize) -> Option<usize> {
    if size >= total {
        return None;
    }
    if size == 0 {
        return Some(1);
    }
    // ceil(total / k) > size  <=>  k < total / size; the largest such k gives the smallest size.
    let k = div_ceil(total, size) - 1;
    Some(div_ceil(total, k))
}

/// The smallest achievable size `>= size` (clamped to `1..=total`). Returns 0 when
/// `total == 0`.
pub fn at_least(total: usize, size: usize) -> usize {
    if total == 0 {
        return 0;
    }
    let size = size.clamp(1, total);
    if is_achievable(total, size) {
        size
    } else {
        // size < total here, because `total` itself is always achievable.
        next_larger(total, size).unwrap_or(total)
    }
}

/// All achievable sizes for `total`, ascending.
///
/// ```
/// use oomph_sched::plan::achievable_sizes;
/// assert_eq!(achievable_sizes(10), vec![1, 2, 3, 4, 5, 10]);
/// ```
pub fn achievable_sizes(total: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut s = 0;
    while let Some(n) = next_larger(total, s) {
        out.push(n);
        s = n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_the_guide() {
        assert_eq!(plan_chunks(96, 64), vec![48, 48]);
        assert_eq!(plan_chunks(10, 4), vec![4, 3, 3]);
        assert_eq!(plan_chunks(64, 12), vec![11, 11, 11, 11, 10, 10]);
        assert_eq!(plan_chunks(64, 64), vec![64]);
        assert_eq!(plan_chunks(0, 8), Vec::<usize>::new());
        assert_eq!(plan_chunks(5, 0), vec![1; 5]);
    }

    #[test]
    fn achievable_sizes_for_64() {
        assert_eq!(achievable_sizes(64), vec![1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 22, 32, 64]);
        assert_eq!(achievable_sizes(1), vec![1]);
        assert_eq!(achievable_sizes(0), Vec::<usize>::new());
    }

    #[test]
    fn stepping_matches_brute_force() {
        for total in 1..=200usize {
            let all: Vec<usize> = (1..=total).map(|k| total.div_ceil(k)).collect();
            let mut set = all.clone();
            set.sort_unstable();
            set.dedup();
            assert_eq!(achievable_sizes(total), set, "total {total}");
            for s in 0..=total + 2 {
                let smaller = set.iter().copied().filter(|&x| x < s).max();
                let larger = set.iter().copied().filter(|&x| x > s).min();
                assert_eq!(next_smaller(total, s), smaller, "total {total} s {s}");
                assert_eq!(next_larger(total, s), larger, "total {total} s {s}");
                let atl = set.iter().copied().filter(|&x| x >= s.max(1)).min().unwrap_or(total);
                assert_eq!(at_least(total, s), atl, "total {total} s {s}");
                if s >= 1 {
                    let le = set.iter().copied().filter(|&x| x <= s).max().unwrap();
                    assert_eq!(max_chunk(total, s), le, "total {total} s {s}");
                }
            }
        }
    }
}

//! The seeded generator every random choice in glassbox draws from.

/// A small deterministic generator (SplitMix64), so prompt sets, null
/// distributions and random baselines are reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
    /// `k` different values drawn from `items` in order of drawing (uniform draws, repeats
    /// drawn again); fewer when `items` holds fewer than `k` different values.
    pub fn distinct<T: Copy + PartialEq>(&mut self, items: &[T], k: usize) -> Vec<T> {
        let mut available: Vec<T> = Vec::new();
        for &x in items {
            if available.len() < k && !available.contains(&x) {
                available.push(x);
            }
        }
        let k = available.len();
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let x = items[self.below(items.len())];
            if !out.contains(&x) {
                out.push(x);
            }
        }
        out
    }
    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn distinct_draws_different_values_and_stops_when_there_are_too_few() {
        let mut rng = Rng::new(5);
        let d = rng.distinct(&[1, 2, 3, 4, 5, 6, 7], 4);
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|x| d.iter().filter(|y| *y == x).count() == 1), "{d:?}");
        let mut few = rng.distinct(&[3, 3, 1, 3], 5);
        few.sort();
        assert_eq!(few, vec![1, 3]);
        assert!(rng.distinct::<u8>(&[], 3).is_empty());
    }
}

//! Counter-based random numbers: every row (or catalogue entry) gets its own splitmix64 stream
//! from `(key, index)`, so rows can be generated in any order, on any thread, alone; and the
//! pickers that turn a stream into skewed choices. Must not hold state shared between rows.

/// The splitmix64 increment (2^64 / golden ratio).
pub(super) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a bijective mix where every input bit affects every output bit.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Key of one independent family of streams (one per seed and purpose, e.g. claim rows).
pub(super) fn stream_key(seed: u64, domain: u64) -> u64 {
    mix64(seed ^ mix64(domain))
}

/// The random stream of one row (or one catalogue entry): splitmix64 started at a state derived
/// from `(key, index)`. Nothing is shared between rows, so rows can be generated in any order.
pub(super) struct RowRng(u64);

impl RowRng {
    pub(super) fn new(key: u64, index: u64) -> Self {
        RowRng(mix64(key ^ index.wrapping_mul(GOLDEN_GAMMA)))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our `n`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub(super) fn standard_normal(&mut self) -> f64 {
        // 1 - unit is in (0, 1]: the logarithm stays finite.
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// Picks indices with given (relative) weights by binary search on the cumulative distribution.
pub(super) struct WeightedPicker {
    /// Normalised running totals; the last one is 1.
    cumulative: Vec<f64>,
}

impl WeightedPicker {
    pub(super) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = weights
            .into_iter()
            .map(|weight| {
                total += weight;
                total
            })
            .collect();
        for value in &mut cumulative {
            *value /= total;
        }
        WeightedPicker { cumulative }
    }

    /// Zipf-Mandelbrot popularity `1 / (rank + offset)^exponent`: a few very popular entries and a
    /// long tail; the offset keeps the top entry from dominating.
    pub(super) fn zipf(count: usize, offset: f64, exponent: f64) -> Self {
        Self::new((0..count).map(|rank| (rank as f64 + offset).powf(-exponent)))
    }

    pub(super) fn pick(&self, rng: &mut RowRng) -> usize {
        let u = rng.unit();
        let index = self.cumulative.partition_point(|&c| c <= u);
        index.min(self.cumulative.len() - 1)
    }
}

/// Picks an index in `0..count` from popularity tiers: tier `t` holds a `share` of the indices
/// and receives `percent` of the picks, uniformly within the tier. Cheap for millions of entries
/// (no table), and gives the "few heavy users, many light ones" shape of real claims.
pub(super) struct TieredPicker {
    /// Tier boundaries: tier `t` is `starts[t]..starts[t + 1]`.
    starts: [u64; 5],
    /// Running totals of the tiers' percentages.
    cumulative_percent: [u64; 4],
    count: u64,
}

impl TieredPicker {
    /// `tiers` is `(share of indices, percent of picks)`; shares sum to 1, percentages to 100.
    pub(super) fn new(count: u64, tiers: [(f64, u64); 4]) -> Self {
        let mut starts = [0; 5];
        let mut cumulative_percent = [0; 4];
        let (mut share_total, mut percent_total) = (0.0, 0);
        for (tier, (share, percent)) in tiers.into_iter().enumerate() {
            share_total += share;
            percent_total += percent;
            starts[tier + 1] = ((count as f64 * share_total).round() as u64).min(count);
            cumulative_percent[tier] = percent_total;
        }
        starts[4] = count;
        TieredPicker {
            starts,
            cumulative_percent,
            count,
        }
    }

    pub(super) fn pick(&self, rng: &mut RowRng) -> u64 {
        let percent = rng.below(100);
        let tier = self
            .cumulative_percent
            .partition_point(|&c| c <= percent)
            .min(3);
        let (start, end) = (self.starts[tier], self.starts[tier + 1]);
        if start == end {
            // Too few entries for this tier (tiny tables): fall back to uniform.
            return rng.below(self.count);
        }
        start + rng.below(end - start)
    }
}

/// Stream domains: each purpose gets its own family of streams.
pub(super) const DOMAIN_CLAIM_ROWS: u64 = 1;
pub(super) const DOMAIN_H2O_ROWS: u64 = 2;
pub(super) const DOMAIN_MEMBERS: u64 = 3;
pub(super) const DOMAIN_DRUGS: u64 = 4;
pub(super) const DOMAIN_DIAGNOSES: u64 = 5;
pub(super) const DOMAIN_PHARMACIES: u64 = 6;
pub(super) const DOMAIN_PLANS: u64 = 7;

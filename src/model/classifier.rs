//! Module S (`s2new`, spec §4.4) and the ranking that feeds it (§4.3 step 8): the top N
//! detections as `[score, dx, dy, dw, dh]` rows, padded by repetition when fewer survive.
//!
//! The original pads at random positions drawn from torch's global RNG, so its outputs vary from
//! run to run. ctmask draws the same kind of cut points from its own generator seeded with
//! `ClassifierConfig::padding_seed`, so a slice always gets the same logits. With zero surviving
//! detections (which the original never handled) S sees an all-zero input and the result is
//! flagged `no_detections`.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::layers::linear;

#[derive(Debug)]
pub struct S2Predictor {
    fc_scores: nn::Linear,
    fc_scores_2: nn::Linear,
    fc_scores_img: nn::Linear,
    pub detections: i64,
}

impl S2Predictor {
    pub fn new(p: nn::Path, detections: i64, s_features: i64) -> Self {
        S2Predictor {
            fc_scores: linear(&p / "fc_scores", 5 * detections, s_features),
            fc_scores_2: linear(&p / "fc_scores_2", s_features, s_features),
            fc_scores_img: linear(&p / "fc_scores_img", s_features, 3),
            detections,
        }
    }

    /// `[N, 5]` ranked rows -> `[3]` logits (control, common pneumonia, COVID-19).
    pub fn forward(&self, ranked: &Tensor) -> Tensor {
        let x = ranked.reshape([1, -1]);
        let x = self.fc_scores.forward(&x).relu();
        let x = self.fc_scores_2.forward(&x).relu();
        self.fc_scores_img.forward(&x).squeeze_dim(0)
    }

    /// `[B, N, 5]` ranked rows of `B` images -> `[B, 3]` logits.
    pub fn forward_batch(&self, ranked: &Tensor) -> Tensor {
        let x = ranked.reshape([ranked.size()[0], -1]);
        let x = self.fc_scores.forward(&x).relu();
        let x = self.fc_scores_2.forward(&x).relu();
        self.fc_scores_img.forward(&x)
    }
}

/// SplitMix64: a tiny, stable generator for the padding cut points.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Segment lengths for spreading `k` ranked rows over `n` slots (`1 <= k < n`): the original's
/// cut points `{0} ∪ sorted(sample of k-1 from 1..=n-2) ∪ {n}`, drawn from `seed`.
pub fn padding_segments(k: usize, n: usize, seed: u64) -> Vec<usize> {
    debug_assert!(k >= 1 && k < n);
    if k == 1 {
        return vec![n];
    }
    let mut pool: Vec<usize> = (1..=n.saturating_sub(2)).collect();
    let mut state = seed;
    for i in 0..(k - 1) {
        let j = i + (splitmix(&mut state) % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    let mut cuts: Vec<usize> = pool[..k - 1].to_vec();
    cuts.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(n);
    bounds.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The input of S: `ranked` `[k, 5]` (descending score) padded to `[n, 5]` by repetition.
/// Returns the rows and whether padding (or the all-zero fallback) was needed.
pub fn pad_ranked(ranked: &Tensor, n: i64, seed: u64) -> (Tensor, bool) {
    let k = ranked.size()[0];
    if k >= n {
        return (ranked.narrow(0, 0, n), false);
    }
    if k == 0 {
        return (Tensor::zeros([n, 5], (Kind::Float, ranked.device())), true);
    }
    let lens = padding_segments(k as usize, n as usize, seed);
    let repeats = crate::ops::host::upload_i64(
        &lens.iter().map(|&l| l as i64).collect::<Vec<_>>(),
        ranked.device(),
    );
    (ranked.repeat_interleave_self_tensor(&repeats, 0, Some(n)), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_n_with_k_nonempty_runs() {
        for (k, n) in [(1usize, 8usize), (2, 8), (5, 8), (7, 8), (3, 256)] {
            let s = padding_segments(k, n, 42);
            assert_eq!(s.len(), k);
            assert_eq!(s.iter().sum::<usize>(), n);
            assert!(s.iter().all(|&l| l >= 1));
            // n-1 is never a cut point in the original's rule, so the last run is >= 2
            assert!(*s.last().unwrap() >= 2 || k == 1);
            assert_eq!(s, padding_segments(k, n, 42), "deterministic per seed");
        }
    }

    #[test]
    fn padding_repeats_rows_in_rank_order() {
        let ranked = Tensor::from_slice(&[0.9f32, 1., 1., 1., 1., 0.5, 2., 2., 2., 2.]).view([2, 5]);
        let (p, padded) = pad_ranked(&ranked, 6, 7);
        assert!(padded);
        let scores: Vec<f32> = Vec::try_from(p.select(1, 0)).unwrap();
        assert_eq!(scores.len(), 6);
        let first_low = scores.iter().position(|&s| s == 0.5).unwrap();
        assert!(first_low >= 1 && scores[..first_low].iter().all(|&s| s == 0.9));
        assert!(scores[first_low..].iter().all(|&s| s == 0.5));
        let (z, flag) = pad_ranked(&Tensor::zeros([0, 5], (Kind::Float, tch::Device::Cpu)), 4, 0);
        assert!(flag);
        assert_eq!(z.size(), vec![4, 5]);
        let (full, flag) = pad_ranked(&Tensor::ones([9, 5], (Kind::Float, tch::Device::Cpu)), 6, 0);
        assert!(!flag);
        assert_eq!(full.size(), vec![6, 5]);
    }
}

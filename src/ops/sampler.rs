//! Port of torchvision `_utils.BalancedPositiveNegativeSampler`: per image, sample at most
//! `batch_size * positive_fraction` positives (label >= 1) and fill the rest with negatives
//! (label 0), uniformly at random.
//!
//! torchvision draws with `torch.randperm` from libtorch's global generator. Here the caller
//! hands in its own seeded generator ([`SamplingRng`]), so a training run's sampled anchors
//! and proposals depend on its seed alone, not on whatever else in the process draws from the
//! global generator (parallel tests, another model). tch exposes no `at::Generator`, so the
//! draw is made on the host with `rand`'s ChaCha8 (a stable, documented stream) and the
//! indices are moved to the labels' device.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// The seeded generator of one training run's sampling (anchors and proposals).
pub type SamplingRng = ChaCha8Rng;

/// A sampling generator for `seed`, on its own stream `stream` (e.g. the epoch), so that a
/// resumed run draws what the uninterrupted run drew.
pub fn sampling_rng(seed: u64, stream: u64) -> SamplingRng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

#[derive(Debug, Clone, Copy)]
pub struct BalancedSampler {
    pub batch_size_per_image: i64,
    pub positive_fraction: f64,
}

/// Sampled indices of one image, each sorted ascending.
#[derive(Debug)]
pub struct Sampled {
    pub positive: Tensor,
    pub negative: Tensor,
}

impl Sampled {
    /// Positives and negatives together in ascending index order (torchvision's `where(pos | neg)`).
    pub fn all(&self) -> Tensor {
        Tensor::cat(&[&self.positive, &self.negative], 0).sort(0, false).0
    }
}

impl BalancedSampler {
    /// Sample from `labels` `[N]` (int or float; >= 1 positive, 0 negative, < 0 ignored).
    pub fn sample(&self, labels: &Tensor, rng: &mut SamplingRng) -> Sampled {
        let positive = labels.ge(1).nonzero().squeeze_dim(1);
        let negative = labels.eq(0).nonzero().squeeze_dim(1);
        let num_pos =
            ((self.batch_size_per_image as f64 * self.positive_fraction) as i64).min(positive.size()[0]);
        let num_neg = (self.batch_size_per_image - num_pos).min(negative.size()[0]);
        let mut pick = |idx: &Tensor, k: i64| {
            // k of n without replacement, uniformly (torchvision: randperm(n)[:k])
            let chosen: Vec<i64> = rand::seq::index::sample(rng, idx.size()[0] as usize, k as usize)
                .into_iter()
                .map(|i| i as i64)
                .collect();
            let perm = Tensor::from_slice(&chosen).to_device(idx.device());
            idx.index_select(0, &perm).sort(0, false).0
        };
        let positive = pick(&positive, num_pos);
        let negative = pick(&negative, num_neg);
        Sampled { positive, negative }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_budget_and_fraction() {
        let mut rng = sampling_rng(3, 0);
        let mut l = vec![0i64; 100];
        for x in l.iter_mut().take(10) {
            *x = 1;
        }
        l[50] = -1;
        let labels = Tensor::from_slice(&l);
        let s = BalancedSampler {
            batch_size_per_image: 16,
            positive_fraction: 0.25,
        }
        .sample(&labels, &mut rng);
        assert_eq!(s.positive.size(), vec![4]);
        assert_eq!(s.negative.size(), vec![12]);
        let pos: Vec<i64> = Vec::try_from(&s.positive).unwrap();
        assert!(pos.iter().all(|&i| i < 10));
        let neg: Vec<i64> = Vec::try_from(&s.negative).unwrap();
        assert!(neg.iter().all(|&i| (10..100).contains(&i) && i != 50));
        // few positives: all of them, the rest negatives
        let s = BalancedSampler {
            batch_size_per_image: 256,
            positive_fraction: 0.75,
        }
        .sample(&labels, &mut rng);
        assert_eq!(s.positive.size(), vec![10]);
        assert_eq!(s.negative.size(), vec![89]);
        assert_eq!(s.all().size(), vec![99]);
    }

    #[test]
    fn the_same_seed_and_stream_draw_the_same_samples() {
        let labels = Tensor::from_slice(&(0..500).map(|i| i64::from(i % 7 == 0)).collect::<Vec<_>>());
        let sampler = BalancedSampler {
            batch_size_per_image: 64,
            positive_fraction: 0.25,
        };
        let draw = |seed, stream| {
            let s = sampler.sample(&labels, &mut sampling_rng(seed, stream));
            (
                Vec::<i64>::try_from(&s.positive).unwrap(),
                Vec::<i64>::try_from(&s.negative).unwrap(),
            )
        };
        assert_eq!(draw(5, 1), draw(5, 1));
        // libtorch's global generator plays no part
        tch::manual_seed(99);
        assert_eq!(draw(5, 1), draw(5, 1));
        assert_ne!(draw(5, 1), draw(5, 2));
        assert_ne!(draw(5, 1), draw(6, 1));
    }
}

//! Port of torchvision `_utils.BalancedPositiveNegativeSampler`: per image, sample at most
//! `batch_size * positive_fraction` positives (label >= 1) and fill the rest with negatives
//! (label 0), uniformly at random with torch's generator (seed it with `tch::manual_seed`).

use tch::{Kind, Tensor};

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
    pub fn sample(&self, labels: &Tensor) -> Sampled {
        let positive = labels.ge(1).nonzero().squeeze_dim(1);
        let negative = labels.eq(0).nonzero().squeeze_dim(1);
        let num_pos =
            ((self.batch_size_per_image as f64 * self.positive_fraction) as i64).min(positive.size()[0]);
        let num_neg = (self.batch_size_per_image - num_pos).min(negative.size()[0]);
        let pick = |idx: &Tensor, k: i64| {
            let perm = Tensor::randperm(idx.size()[0], (Kind::Int64, idx.device())).narrow(0, 0, k);
            idx.index_select(0, &perm).sort(0, false).0
        };
        Sampled {
            positive: pick(&positive, num_pos),
            negative: pick(&negative, num_neg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_budget_and_fraction() {
        tch::manual_seed(3);
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
        .sample(&labels);
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
        .sample(&labels);
        assert_eq!(s.positive.size(), vec![10]);
        assert_eq!(s.negative.size(), vec![89]);
        assert_eq!(s.all().size(), vec![99]);
    }
}

//! Port of torchvision `_utils.Matcher`: assigns each prediction (column of an IoU matrix
//! `[M gt, N pred]`) the index of its best ground truth, or -1 below the low threshold, -2
//! between the thresholds; with low-quality matches, every prediction that ties for a GT's best
//! IoU keeps that match.

use tch::Tensor;

/// IoU below the low threshold.
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// IoU between the thresholds.
pub const BETWEEN_THRESHOLDS: i64 = -2;

#[derive(Debug, Clone, Copy)]
pub struct Matcher {
    pub high_threshold: f64,
    pub low_threshold: f64,
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    pub fn new(high: f64, low: f64, allow_low_quality_matches: bool) -> Self {
        Matcher {
            high_threshold: high,
            low_threshold: low,
            allow_low_quality_matches,
        }
    }

    /// Matched GT index per prediction `[N]` (int64), with the negative codes above.
    pub fn matches(&self, quality: &Tensor) -> Tensor {
        let (matched_vals, matches) = quality.max_dim(0, false);
        let all_matches = matches.copy();
        let below = matched_vals.lt(self.low_threshold);
        let between = matched_vals
            .ge(self.low_threshold)
            .logical_and(&matched_vals.lt(self.high_threshold));
        let matches = matches
            .masked_fill(&below, BELOW_LOW_THRESHOLD)
            .masked_fill(&between, BETWEEN_THRESHOLDS);
        if !self.allow_low_quality_matches {
            return matches;
        }
        let (highest, _) = quality.max_dim(1, true); // [M, 1]
        let pairs = quality.eq_tensor(&highest).nonzero(); // [P, 2] (gt, pred)
        let preds = pairs.select(1, 1);
        matches.index_copy(0, &preds, &all_matches.index_select(0, &preds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_low_quality_matches() {
        // 2 GT x 5 predictions
        let q = Tensor::from_slice(&[
            0.9f32, 0.5, 0.1, 0.2, 0.0, //
            0.1, 0.6, 0.25, 0.25, 0.0,
        ])
        .reshape([2, 5]);
        let m = Matcher::new(0.7, 0.3, false).matches(&q);
        assert_eq!(Vec::<i64>::try_from(&m).unwrap(), vec![0, -2, -1, -1, -1]);
        let m = Matcher::new(0.7, 0.3, true).matches(&q);
        // GT 1's best IoU is 0.6 (prediction 1), which gets its match back.
        assert_eq!(Vec::<i64>::try_from(&m).unwrap(), vec![0, 1, -1, -1, -1]);
        let m = Matcher::new(0.75, 0.5, false).matches(&q);
        assert_eq!(Vec::<i64>::try_from(&m).unwrap(), vec![0, -2, -1, -1, -1]);
    }

    #[test]
    fn low_quality_ties_all_keep_their_match() {
        let q = Tensor::from_slice(&[0.4f32, 0.4, 0.1]).reshape([1, 3]);
        let m = Matcher::new(0.7, 0.3, true).matches(&q);
        assert_eq!(Vec::<i64>::try_from(&m).unwrap(), vec![0, 0, -1]);
    }
}

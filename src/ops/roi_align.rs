//! RoIAlign (torchvision `ops.roi_align` with `aligned=False`, the legacy half-pixel behaviour of
//! torchvision 0.3.0) and `MultiScaleRoIAlign`, written with one `grid_sampler_2d` call per
//! (image, sampling grid) group: bilinear, `align_corners=true`, border clamping, so a sample point
//! is read exactly as torchvision's bilinear_interpolate reads it, and points outside
//! `[-1, H] x [-1, W]` are zeroed by a mask, as torchvision zeroes them. Autograd through the
//! sampler gives RoIAlign's backward.

use tch::{Kind, Tensor};

/// RoIAlign of `rois` `[K, 5]` = (batch index, x1, y1, x2, y2) on `input` `[N, C, H, W]`.
/// `sampling_ratio` <= 0 means adaptive: `ceil(roi_size / output_size)` samples per bin.
/// Returns `[K, C, out_h, out_w]`.
pub fn roi_align(
    input: &Tensor,
    rois: &Tensor,
    output: (i64, i64),
    spatial_scale: f64,
    sampling_ratio: i64,
) -> Tensor {
    let (out_h, out_w) = output;
    let [_, c, h, w] = input.size()[..] else {
        panic!("roi_align input must be [N, C, H, W]");
    };
    let k = rois.size()[0];
    let device = input.device();
    let result = Tensor::zeros([k, c, out_h, out_w], (input.kind(), device));
    if k == 0 {
        return result;
    }
    let rois = rois.to_kind(Kind::Float);
    let scaled = rois.narrow(1, 1, 4) * spatial_scale; // [K, 4]
    let roi_w = (scaled.select(1, 2) - scaled.select(1, 0)).clamp_min(1.0);
    let roi_h = (scaled.select(1, 3) - scaled.select(1, 1)).clamp_min(1.0);
    // Group RoIs by (batch index, samples per bin in y, in x).
    let batch = rois.select(1, 0).to_kind(Kind::Int64);
    let (grid_h, grid_w) = if sampling_ratio > 0 {
        let g = Tensor::full([k], sampling_ratio, (Kind::Int64, device));
        (g.shallow_clone(), g)
    } else {
        (
            (&roi_h / out_h as f64).ceil().to_kind(Kind::Int64),
            (&roi_w / out_w as f64).ceil().to_kind(Kind::Int64),
        )
    };
    let key = Tensor::stack(&[&batch, &grid_h, &grid_w], 1);
    let (groups, inverse, _) = key.unique_dim(0, true, true, false);
    let groups: Vec<Vec<i64>> =
        Vec::try_from(groups.to_device(tch::Device::Cpu)).expect("group keys are int64");
    let mut result = result;
    for (gi, g) in groups.iter().enumerate() {
        let members = inverse.eq(gi as i64).nonzero().squeeze_dim(1);
        let (b, gh, gw) = (g[0], g[1].max(1), g[2].max(1));
        // Chunks bound the sampler's temporary [C, K, out_h*gh, out_w*gw].
        let per_chunk = (16_000_000 / (c * out_h * gh * out_w * gw).max(1)).max(1);
        let m = members.size()[0];
        let mut start = 0;
        while start < m {
            let len = per_chunk.min(m - start);
            let idx = members.narrow(0, start, len);
            let pooled = align_group(
                &input.get(b).unsqueeze(0),
                &scaled.index_select(0, &idx),
                &roi_w.index_select(0, &idx),
                &roi_h.index_select(0, &idx),
                (out_h, out_w),
                (gh, gw),
                (h, w),
            );
            result = result.index_copy(0, &idx, &pooled);
            start += len;
        }
    }
    result
}

/// Sample coordinates `[K, out*g]`: `start + p * bin + (i + 0.5) * bin / g` for bin p, sample i.
fn sample_coords(start: &Tensor, size: &Tensor, out: i64, g: i64) -> Tensor {
    let device = start.device();
    let bin = (size / out as f64).unsqueeze(1); // [K, 1]
    let p = Tensor::arange(out, (Kind::Float, device)).repeat_interleave_self_int(g, 0, None);
    let i = Tensor::arange(g, (Kind::Float, device)).repeat([out]) + 0.5;
    start.unsqueeze(1) + p.unsqueeze(0) * &bin + i.unsqueeze(0) * &bin / g as f64
}

fn align_group(
    image: &Tensor,  // [1, C, H, W]
    scaled: &Tensor, // [K, 4] in feature coordinates
    roi_w: &Tensor,
    roi_h: &Tensor,
    (out_h, out_w): (i64, i64),
    (gh, gw): (i64, i64),
    (h, w): (i64, i64),
) -> Tensor {
    let k = scaled.size()[0];
    let c = image.size()[1];
    let ys = sample_coords(&scaled.select(1, 1), roi_h, out_h, gh); // [K, SH]
    let xs = sample_coords(&scaled.select(1, 0), roi_w, out_w, gw); // [K, SW]
    let (sh, sw) = (out_h * gh, out_w * gw);
    let valid_y = ys.ge(-1.0).logical_and(&ys.le(h as f64));
    let valid_x = xs.ge(-1.0).logical_and(&xs.le(w as f64));
    let valid = valid_y.unsqueeze(2).logical_and(&valid_x.unsqueeze(1)); // [K, SH, SW]
    // align_corners=true: pixel p <-> normalised 2p/(size-1) - 1; border padding clamps.
    let norm = |v: &Tensor, size: i64| v * (2.0 / (size - 1).max(1) as f64) - 1.0;
    let gx = norm(&xs, w).unsqueeze(1).expand([k, sh, sw], false);
    let gy = norm(&ys, h).unsqueeze(2).expand([k, sh, sw], false);
    let grid = Tensor::stack(&[gx, gy], 3)
        .reshape([1, k * sh, sw, 2])
        .to_kind(image.kind());
    let sampled = image.grid_sampler_2d(&grid, 0, 1, true); // [1, C, K*SH, SW]
    let sampled = sampled.reshape([c, k, sh, sw]) * valid.to_kind(image.kind()).unsqueeze(0);
    let pooled = sampled.reshape([c, k, out_h, gh, out_w, gw]).sum_dim_intlist(
        [3i64, 5].as_slice(),
        false,
        image.kind(),
    ) / (gh * gw) as f64; // [C, K, out_h, out_w]
    pooled.permute([1, 0, 2, 3])
}

/// torchvision `MultiScaleRoIAlign`: each box is pooled from the FPN level its size maps to.
#[derive(Debug, Clone)]
pub struct MultiScaleRoiAlign {
    pub output_size: i64,
    pub sampling_ratio: i64,
}

impl MultiScaleRoiAlign {
    /// Pool `boxes` (one `[K_i, 4]` tensor per image, image coordinates) from `features` (the
    /// RoI levels, finest first), given the un-padded image sizes `(h, w)`. Returns `[sum K_i, C, S, S]`.
    pub fn pool(&self, features: &[Tensor], boxes: &[Tensor], image_sizes: &[(i64, i64)]) -> Tensor {
        let rois = rois_with_batch_index(boxes);
        let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(1);
        let max_w = image_sizes.iter().map(|s| s.1).max().unwrap_or(1);
        let scales: Vec<f64> = features.iter().map(|f| infer_scale(f, (max_h, max_w))).collect();
        let out = (self.output_size, self.output_size);
        if features.len() == 1 {
            return roi_align(&features[0], &rois, out, scales[0], self.sampling_ratio);
        }
        let k_min = (-scales[0].log2()) as i64;
        let k_max = (-scales[scales.len() - 1].log2()) as i64;
        let levels = map_levels(&rois.narrow(1, 1, 4), k_min, k_max);
        let f0 = &features[0];
        let mut result = Tensor::zeros(
            [rois.size()[0], f0.size()[1], self.output_size, self.output_size],
            (f0.kind(), f0.device()),
        );
        for (level, (feature, scale)) in features.iter().zip(&scales).enumerate() {
            let idx = levels.eq(level as i64).nonzero().squeeze_dim(1);
            if idx.size()[0] == 0 {
                continue;
            }
            let pooled = roi_align(
                feature,
                &rois.index_select(0, &idx),
                out,
                *scale,
                self.sampling_ratio,
            );
            result = result.index_copy(0, &idx, &pooled);
        }
        result
    }
}

/// `[K, 5]` rows (batch index, x1, y1, x2, y2) from per-image boxes.
pub fn rois_with_batch_index(boxes: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let idx = Tensor::full([b.size()[0], 1], i as f64, (b.kind(), b.device()));
            Tensor::cat(&[idx, b.shallow_clone()], 1)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// `2^round(log2(feature / image))`, from the first spatial dimension as torchvision does.
pub fn infer_scale(feature: &Tensor, image: (i64, i64)) -> f64 {
    let approx = feature.size()[2] as f32 / image.0 as f32;
    2f64.powf(approx.log2().round() as f64)
}

/// FPN level (0-based from `k_min`) of each box: `floor(4 + log2(sqrt(area) / 224) + 1e-6)`
/// clamped to `[k_min, k_max]` (torchvision `LevelMapper`).
pub fn map_levels(boxes: &Tensor, k_min: i64, k_max: i64) -> Tensor {
    let area = crate::ops::boxes::box_area(boxes);
    let s = area.sqrt();
    let lv = ((s / 224.0).log2() + 4.0 + 1e-6).floor();
    lv.clamp(k_min as f64, k_max as f64).to_kind(Kind::Int64) - k_min
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of torchvision's CPU kernel for one output value.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        img: &[f32],
        h: usize,
        w: usize,
        roi: [f32; 4],
        scale: f32,
        out: usize,
        sr: usize,
        ph: usize,
        pw: usize,
    ) -> f32 {
        let (x1, y1, x2, y2) = (roi[0] * scale, roi[1] * scale, roi[2] * scale, roi[3] * scale);
        let rw = (x2 - x1).max(1.0);
        let rh = (y2 - y1).max(1.0);
        let (bw, bh) = (rw / out as f32, rh / out as f32);
        let mut acc = 0f32;
        for iy in 0..sr {
            let y = y1 + ph as f32 * bh + (iy as f32 + 0.5) * bh / sr as f32;
            for ix in 0..sr {
                let x = x1 + pw as f32 * bw + (ix as f32 + 0.5) * bw / sr as f32;
                if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
                    continue;
                }
                let (mut y, mut x) = (y.max(0.0), x.max(0.0));
                let mut yl = y as usize;
                let mut xl = x as usize;
                let yh;
                let xh;
                if yl >= h - 1 {
                    yl = h - 1;
                    yh = h - 1;
                    y = yl as f32;
                } else {
                    yh = yl + 1;
                }
                if xl >= w - 1 {
                    xl = w - 1;
                    xh = w - 1;
                    x = xl as f32;
                } else {
                    xh = xl + 1;
                }
                let (ly, lx) = (y - yl as f32, x - xl as f32);
                let (hy, hx) = (1.0 - ly, 1.0 - lx);
                acc += hy * hx * img[yl * w + xl]
                    + hy * lx * img[yl * w + xh]
                    + ly * hx * img[yh * w + xl]
                    + ly * lx * img[yh * w + xh];
            }
        }
        acc / (sr * sr) as f32
    }

    #[test]
    fn matches_kernel_transcription_including_edges() {
        tch::manual_seed(0);
        let (h, w) = (9usize, 11usize);
        let input = Tensor::rand([1, 1, h as i64, w as i64], (Kind::Float, tch::Device::Cpu));
        let img: Vec<f32> = Vec::try_from(input.flatten(0, -1)).unwrap();
        let rois = [
            [0.0f32, 0.0, 20.0, 16.0],
            [-6.0, -4.0, 10.0, 8.0],
            [30.0, 20.0, 48.0, 40.0],
            [3.0, 3.0, 3.5, 3.2],
        ];
        let flat: Vec<f32> = rois.iter().flat_map(|r| [0.0, r[0], r[1], r[2], r[3]]).collect();
        let t = Tensor::from_slice(&flat).reshape([4, 5]);
        let out = roi_align(&input, &t, (3, 3), 0.25, 2);
        for (k, r) in rois.iter().enumerate() {
            for ph in 0..3 {
                for pw in 0..3 {
                    let want = reference(&img, h, w, *r, 0.25, 3, 2, ph, pw);
                    let got = out.double_value(&[k as i64, 0, ph as i64, pw as i64]) as f32;
                    assert!(
                        (want - got).abs() < 1e-5,
                        "roi {k} bin ({ph},{pw}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn adaptive_sampling_averages_a_constant() {
        let input = Tensor::ones([2, 3, 16, 16], (Kind::Float, tch::Device::Cpu)) * 2.5;
        let rois = Tensor::from_slice(&[1f32, 0., 0., 15., 15., 0., 2., 2., 9., 13.]).reshape([2, 5]);
        let out = roi_align(&input, &rois, (4, 4), 1.0, -1);
        assert_eq!(out.size(), vec![2, 3, 4, 4]);
        assert!((out - 2.5).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn level_mapping() {
        let b = crate::ops::boxes::boxes_from_rows(&[
            [0., 0., 10., 10.],
            [0., 0., 224., 224.],
            [0., 0., 500., 500.],
            [0., 0., 112., 112.],
        ]);
        assert_eq!(
            Vec::<i64>::try_from(map_levels(&b, 2, 5)).unwrap(),
            vec![0, 2, 3, 1]
        );
    }
}

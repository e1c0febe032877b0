//! Box geometry (port of torchvision `ops/boxes.py`) and `BoxCoder` (port of
//! `models/detection/_utils.py`). Boxes are `[N, 4]` as (x1, y1, x2, y2). The arithmetic follows
//! torchvision's operation order so that float32 results agree bit for bit where possible.

use tch::{Kind, Tensor};

/// Areas of `[..., 4]` boxes: `(x2 - x1) * (y2 - y1)`.
pub fn box_area(boxes: &Tensor) -> Tensor {
    let (x1, y1, x2, y2) = columns(boxes);
    (x2 - x1) * (y2 - y1)
}

fn columns(b: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    (b.select(-1, 0), b.select(-1, 1), b.select(-1, 2), b.select(-1, 3))
}

/// Pairwise IoU `[N, M]` of `a` `[N, 4]` and `b` `[M, 4]`.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area1 = box_area(a);
    let area2 = box_area(b);
    let lt = a.unsqueeze(1).narrow(2, 0, 2).maximum(&b.narrow(1, 0, 2)); // [N, M, 2]
    let rb = a.unsqueeze(1).narrow(2, 2, 2).minimum(&b.narrow(1, 2, 2)); // [N, M, 2]
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1); // [N, M]
    let union = area1.unsqueeze(1) + area2.unsqueeze(0) - &inter;
    inter / union
}

/// Clip boxes to an image of `height` x `width`.
pub fn clip_boxes_to_image(boxes: &Tensor, height: i64, width: i64) -> Tensor {
    let shape = boxes.size();
    let last = *shape.last().expect("boxes have a last dimension of 4");
    let b = boxes.reshape([-1, last]);
    let xs = b.slice(1, 0, last, 2).clamp(0.0, width as f64);
    let ys = b.slice(1, 1, last, 2).clamp(0.0, height as f64);
    Tensor::stack(&[xs, ys], 2).reshape(shape.as_slice())
}

/// Clip `[B, n, 4]` boxes, image `i` to `heights[i]` x `widths[i]` (`[B, 1]` float tensors): the
/// same float operations as [`clip_boxes_to_image`] per image.
pub fn clip_batched(boxes: &Tensor, heights: &Tensor, widths: &Tensor) -> Tensor {
    let c = |k: i64, bound: &Tensor| boxes.select(2, k).clamp_min(0.0).minimum(bound);
    Tensor::stack(&[c(0, widths), c(1, heights), c(2, widths), c(3, heights)], 2)
}

/// Which of `[..., 4]` boxes have width and height both >= `min_size` (torchvision's
/// `remove_small_boxes` keeps these), as a mask: the batched NMS takes masks, not indices.
pub fn large_enough(boxes: &Tensor, min_size: f64) -> Tensor {
    let (x1, y1, x2, y2) = columns(boxes);
    let ws = x2 - x1;
    let hs = y2 - y1;
    ws.ge(min_size).logical_and(&hs.ge(min_size))
}

/// Which of `[..., 4]` boxes have a positive area, as a mask.
pub fn has_area(boxes: &Tensor) -> Tensor {
    box_area(boxes).gt(0.0)
}

/// Encodes boxes relative to reference boxes and decodes deltas back (torchvision `BoxCoder`).
#[derive(Debug, Clone, Copy)]
pub struct BoxCoder {
    pub weights: [f64; 4],
    pub bbox_xform_clip: f64,
}

impl BoxCoder {
    /// A coder with the given (wx, wy, ww, wh) and the default clip `log(1000/16)`.
    pub fn new(weights: [f64; 4]) -> Self {
        BoxCoder {
            weights,
            bbox_xform_clip: (1000.0f64 / 16.0).ln(),
        }
    }

    /// Regression targets `[N, 4]` of `reference` (matched GT) boxes w.r.t. `proposals`.
    pub fn encode(&self, reference: &Tensor, proposals: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let (px1, py1, px2, py2) = columns(proposals);
        let (gx1, gy1, gx2, gy2) = columns(reference);
        let ex_w = &px2 - &px1;
        let ex_h = &py2 - &py1;
        let ex_cx = &px1 + &ex_w * 0.5;
        let ex_cy = &py1 + &ex_h * 0.5;
        let gt_w = &gx2 - &gx1;
        let gt_h = &gy2 - &gy1;
        let gt_cx = &gx1 + &gt_w * 0.5;
        let gt_cy = &gy1 + &gt_h * 0.5;
        let dx = (gt_cx - ex_cx) * wx / &ex_w;
        let dy = (gt_cy - ex_cy) * wy / &ex_h;
        let dw = (gt_w / &ex_w).log() * ww;
        let dh = (gt_h / &ex_h).log() * wh;
        Tensor::stack(&[dx, dy, dw, dh], 1)
    }

    /// Decode `rel_codes` `[N, 4*K]` against `boxes` `[N, 4]` into `[N, K, 4]` boxes.
    pub fn decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let boxes = boxes.to_kind(rel_codes.kind());
        let n = rel_codes.size()[0];
        let codes = rel_codes.reshape([n, -1, 4]); // [N, K, 4]
        let (x1, y1, x2, y2) = columns(&boxes);
        let widths = &x2 - &x1;
        let heights = &y2 - &y1;
        let ctr_x = (&x1 + &widths * 0.5).unsqueeze(1);
        let ctr_y = (&y1 + &heights * 0.5).unsqueeze(1);
        let widths = widths.unsqueeze(1);
        let heights = heights.unsqueeze(1);
        let dx = codes.select(2, 0) / wx;
        let dy = codes.select(2, 1) / wy;
        let dw = (codes.select(2, 2) / ww).clamp_max(self.bbox_xform_clip);
        let dh = (codes.select(2, 3) / wh).clamp_max(self.bbox_xform_clip);
        let pred_cx = dx * &widths + ctr_x;
        let pred_cy = dy * &heights + ctr_y;
        let pred_w = dw.exp() * widths;
        let pred_h = dh.exp() * heights;
        let half_w = pred_w * 0.5;
        let half_h = pred_h * 0.5;
        Tensor::stack(
            &[
                &pred_cx - &half_w,
                &pred_cy - &half_h,
                pred_cx + half_w,
                pred_cy + half_h,
            ],
            2,
        )
    }
}

/// A float32 `[N, 4]` tensor from rows (for tests and small inputs).
pub fn boxes_from_rows(rows: &[[f32; 4]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat)
        .reshape([rows.len() as i64, 4])
        .to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
        Vec::<Vec<f32>>::try_from(t).unwrap()
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = boxes_from_rows(&[[0., 0., 10., 10.], [5., 5., 15., 15.]]);
        let b = boxes_from_rows(&[[0., 0., 10., 10.], [10., 10., 20., 20.], [0., 0., 5., 5.]]);
        let iou = vec2(&box_iou(&a, &b));
        assert_eq!(iou[0], vec![1.0, 0.0, 0.25]);
        assert!((iou[1][0] - 25.0 / 175.0).abs() < 1e-7);
        assert!((iou[1][1] - 25.0 / 175.0).abs() < 1e-7);
        assert_eq!(iou[1][2], 0.0);
    }

    #[test]
    fn encode_decode_round_trip_with_weights() {
        let coder = BoxCoder::new([10., 10., 5., 5.]);
        let props = boxes_from_rows(&[[10., 20., 50., 60.], [0., 0., 4., 8.]]);
        let gt = boxes_from_rows(&[[12., 18., 48., 70.], [1., 1., 5., 5.]]);
        let codes = coder.encode(&gt, &props);
        let back = coder.decode(&codes, &props).squeeze_dim(1);
        let d = (back - gt).abs().max().double_value(&[]);
        assert!(d < 1e-4, "round trip error {d}");
        // dx of the first pair: 10 * (30 - 30) / 40 = 0, dw = 5 * ln(36 / 40)
        let c = vec2(&codes);
        assert!(c[0][0].abs() < 1e-7);
        assert!((c[0][2] - 5.0 * (36.0f32 / 40.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn decode_clamps_large_scale_deltas() {
        let coder = BoxCoder::new([1., 1., 1., 1.]);
        let props = boxes_from_rows(&[[0., 0., 16., 16.]]);
        let codes = Tensor::from_slice(&[0f32, 0., 100., 100.]).reshape([1, 4]);
        let b = vec2(&coder.decode(&codes, &props).squeeze_dim(1));
        // exp(log(1000/16)) * 16 = 1000, centred on 8
        assert!((b[0][2] - b[0][0] - 1000.0).abs() < 1e-2);
    }

    #[test]
    fn clip_and_small_box_removal() {
        let b = boxes_from_rows(&[[-5., -5., 600., 20.], [3., 3., 3., 9.], [1., 1., 2., 2.]]);
        let c = vec2(&clip_boxes_to_image(&b, 512, 512));
        assert_eq!(c[0], vec![0., 0., 512., 20.]);
        let idx = |m: Tensor| Vec::<i64>::try_from(m.nonzero().squeeze_dim(1)).unwrap();
        assert_eq!(idx(large_enough(&b, 1e-3)), vec![0, 2]);
        assert_eq!(idx(large_enough(&b, 0.0)), vec![0, 1, 2]);
        assert_eq!(idx(has_area(&b)), vec![0, 2]);
    }
}

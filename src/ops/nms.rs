//! Non-maximum suppression (torchvision `ops.nms`, `ops.batched_nms`) on tensor ops plus a greedy
//! pass on the host: boxes are stably sorted by descending score, the IoU matrix of the sorted
//! boxes is computed on the boxes' device, thresholded, and copied to the host once (n² bytes: on
//! a GPU this is the one synchronisation NMS needs), where the greedy loop keeps a box unless a
//! kept, higher-scored box overlaps it by more than the threshold. Returned indices are in
//! descending score order, as torchvision's are.

use tch::{Kind, Tensor};

use super::boxes::box_iou;

/// Indices of the boxes kept by NMS, in descending score order.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Tensor {
    let device = boxes.device();
    let n = boxes.size()[0];
    if n == 0 {
        return Tensor::zeros([0], (Kind::Int64, device));
    }
    let order = scores.argsort_stable(true, 0, true); // [n] descending, ties in index order
    let sorted = boxes.index_select(0, &order);
    let over = box_iou(&sorted, &sorted).gt(iou_threshold).to_kind(Kind::Uint8);
    let over: Vec<u8> = Vec::try_from(over.flatten(0, -1).to_device(tch::Device::Cpu))
        .expect("a uint8 tensor converts to Vec<u8>");
    let keep = greedy(&over, n as usize);
    let keep = Tensor::from_slice(&keep).to_device(device);
    order.index_select(0, &keep)
}

/// Greedy suppression over a row-major `n x n` "overlaps too much" matrix of score-sorted boxes.
fn greedy(over: &[u8], n: usize) -> Vec<i64> {
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for i in 0..n {
        if suppressed[i] {
            continue;
        }
        keep.push(i as i64);
        let row = &over[i * n..(i + 1) * n];
        for j in (i + 1)..n {
            if row[j] != 0 {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// NMS within each group (`idxs`: class or level), boxes of different groups never suppressing
/// each other. Returns indices in descending score order (a stable sort over the kept boxes).
pub fn batched_nms(boxes: &Tensor, scores: &Tensor, idxs: &Tensor, iou_threshold: f64) -> Tensor {
    let device = boxes.device();
    if boxes.size()[0] == 0 {
        return Tensor::zeros([0], (Kind::Int64, device));
    }
    let groups: Vec<i64> = Vec::try_from(
        idxs.unique_dim(0, true, false, false)
            .0
            .to_device(tch::Device::Cpu),
    )
    .expect("group ids are int64");
    let mut kept = Vec::with_capacity(groups.len());
    for g in groups {
        let members = idxs.eq(g).nonzero().squeeze_dim(1);
        let k = nms(
            &boxes.index_select(0, &members),
            &scores.index_select(0, &members),
            iou_threshold,
        );
        kept.push(members.index_select(0, &k));
    }
    // torchvision's per-group path: keep-mask -> ascending indices -> sort by descending score.
    let keep = Tensor::cat(&kept, 0).sort(0, false).0;
    let order = scores.index_select(0, &keep).argsort_stable(true, 0, true);
    keep.index_select(0, &order)
}

/// One family of NMS problems solved together: `boxes` `[B, n, 4]` of `B` independent problems,
/// each already in priority order (descending score, ties in index order), and `valid` `[B, n]`
/// (bool): which boxes take part (the others neither are kept nor suppress).
pub struct SortedProblems {
    pub boxes: Tensor,
    pub valid: Tensor,
}

/// Greedy NMS of several [`SortedProblems`] with one device-to-host copy for all of them: the
/// "overlaps too much" matrices (`IoU > iou_threshold`, computed on the boxes' device exactly as
/// [`nms`] computes them) packed 8 pairs to a byte, and the validity flags, are concatenated and
/// read once; the greedy passes run on the host. Returns, per family and per problem, the kept
/// positions in priority order. On the CPU pass problems with every box valid (compact them
/// first: the read costs nothing there); on CUDA the mask keeps the shapes static.
pub fn greedy_sorted(families: &[SortedProblems], iou_threshold: f64) -> Vec<Vec<Vec<usize>>> {
    greedy_sorted_with(families, iou_threshold, &[]).0
}

/// [`greedy_sorted`], also reading the float32 tensors `extra` (any shape, flattened) in the same
/// copy: for the scores that order what the passes kept.
pub fn greedy_sorted_with(
    families: &[SortedProblems],
    iou_threshold: f64,
    extra: &[&Tensor],
) -> (Vec<Vec<Vec<usize>>>, Vec<Vec<f32>>) {
    let mut parts = Vec::new();
    let mut dims = Vec::with_capacity(families.len());
    for f in families {
        let size = f.boxes.size();
        let (b, n) = (size[0], size[1]);
        dims.push((b as usize, n as usize));
        if b == 0 || n == 0 {
            continue;
        }
        let device = f.boxes.device();
        let over = batched_box_iou(&f.boxes).gt(iou_threshold).to_kind(Kind::Uint8);
        // rows padded to whole 64-bit words: the host ORs a kept box's row in word by word
        let n8 = (n + 63) / 64 * 8;
        let bits = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).to_device(device);
        let packed = over
            .constant_pad_nd([0, n8 * 8 - n])
            .view([b, n, n8, 8])
            .g_mul(&bits)
            .sum_dim_intlist(-1, false, Kind::Uint8);
        parts.push(packed.flatten(0, -1));
        parts.push(f.valid.to_kind(Kind::Uint8).flatten(0, -1));
    }
    let extra_len: Vec<usize> = extra.iter().map(|t| t.numel()).collect();
    for t in extra {
        if t.numel() > 0 {
            parts.push(
                t.to_kind(Kind::Float)
                    .contiguous()
                    .flatten(0, -1)
                    .view_dtype(Kind::Uint8),
            );
        }
    }
    let host: Vec<u8> = if parts.is_empty() {
        Vec::new()
    } else {
        super::host::read(&Tensor::cat(&parts, 0)).expect("a uint8 tensor converts to Vec<u8>")
    };
    let mut at = 0usize;
    let kept = dims
        .iter()
        .map(|&(b, n)| {
            if b == 0 || n == 0 {
                return vec![Vec::new(); b];
            }
            let n8 = n.div_ceil(64) * 8;
            let bits = &host[at..at + b * n * n8];
            let valid = &host[at + b * n * n8..at + b * n * n8 + b * n];
            at += b * n * n8 + b * n;
            (0..b)
                .map(|i| greedy_bits(&bits[i * n * n8..(i + 1) * n * n8], &valid[i * n..(i + 1) * n], n))
                .collect()
        })
        .collect();
    let floats = extra_len
        .iter()
        .map(|&len| {
            let v = host[at..at + 4 * len]
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            at += 4 * len;
            v
        })
        .collect();
    (kept, floats)
}

/// Greedy suppression over packed rows (`8 * ceil(n / 64)` bytes per box, bit `j % 8` of byte
/// `j / 8` set when box `j` overlaps the row's box too much), skipping invalid boxes: the
/// removed set is a bitset, and each kept box's row is ORed into it a 64-bit word at a time
/// (torchvision's CUDA NMS does the same pass on the host).
fn greedy_bits(bits: &[u8], valid: &[u8], n: usize) -> Vec<usize> {
    let words = n.div_ceil(64);
    let word = |row: usize, w: usize| {
        let at = (row * words + w) * 8;
        u64::from_le_bytes(bits[at..at + 8].try_into().expect("8 bytes"))
    };
    let mut removed = vec![0u64; words];
    let mut keep = Vec::new();
    for i in 0..n {
        if valid[i] == 0 || removed[i / 64] >> (i % 64) & 1 != 0 {
            continue;
        }
        keep.push(i);
        for (w, r) in removed.iter_mut().enumerate().skip(i / 64) {
            *r |= word(i, w);
        }
    }
    keep
}

/// Pairwise IoU within each problem: `[B, n, 4]` -> `[B, n, n]`, the same float32 operations as
/// [`box_iou`] of a problem's boxes with themselves.
pub fn batched_box_iou(boxes: &Tensor) -> Tensor {
    let col = |k: i64| boxes.select(-1, k);
    let area = (col(2) - col(0)) * (col(3) - col(1)); // [B, n]
    let lt = boxes
        .unsqueeze(2)
        .narrow(3, 0, 2)
        .maximum(&boxes.unsqueeze(1).narrow(3, 0, 2));
    let rb = boxes
        .unsqueeze(2)
        .narrow(3, 2, 2)
        .minimum(&boxes.unsqueeze(1).narrow(3, 2, 2));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(3, 0) * wh.select(3, 1); // [B, n, n]
    let union = area.unsqueeze(2) + area.unsqueeze(1) - &inter;
    inter / union
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::boxes::boxes_from_rows;

    fn v(t: &Tensor) -> Vec<i64> {
        Vec::try_from(t).unwrap()
    }

    #[test]
    fn suppresses_overlaps_above_threshold_only() {
        let b = boxes_from_rows(&[
            [0., 0., 10., 10.],
            [1., 0., 11., 10.], // IoU with 0: 90/110 = 0.818
            [20., 20., 30., 30.],
            [0., 0., 10., 5.], // IoU with 0: 0.5 exactly, not > 0.5
        ]);
        let s = Tensor::from_slice(&[0.9f32, 0.95, 0.5, 0.8]);
        assert_eq!(v(&nms(&b, &s, 0.5)), vec![1, 3, 2]);
        assert_eq!(v(&nms(&b, &s, 0.85)), vec![1, 0, 3, 2]);
    }

    #[test]
    fn ties_keep_index_order() {
        let b = boxes_from_rows(&[[0., 0., 10., 10.], [0., 0., 10., 10.], [50., 50., 60., 60.]]);
        let s = Tensor::from_slice(&[0.5f32, 0.5, 0.5]);
        assert_eq!(v(&nms(&b, &s, 0.5)), vec![0, 2]);
    }

    #[test]
    fn greedy_sorted_matches_nms_on_random_problems() {
        // several problems of one family, some boxes invalid: the kept positions are those of
        // `nms` run on the valid boxes alone (priority = position, so scores descend)
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        use rand::{Rng, SeedableRng};
        for &n in &[1usize, 7, 8, 9, 40, 130] {
            let b = 3;
            let mut rows = Vec::new();
            let mut valid = Vec::new();
            for _ in 0..b * n {
                let (x, y) = (rng.gen_range(0.0..60.0f32), rng.gen_range(0.0..60.0f32));
                let (w, h) = (rng.gen_range(1.0..30.0f32), rng.gen_range(1.0..30.0f32));
                rows.push([x, y, x + w, y + h]);
                valid.push(rng.gen_bool(0.8));
            }
            let boxes = boxes_from_rows(&rows).view([b as i64, n as i64, 4]);
            let vt = Tensor::from_slice(&valid).view([b as i64, n as i64]);
            let got = greedy_sorted(
                &[SortedProblems {
                    boxes: boxes.shallow_clone(),
                    valid: vt,
                }],
                0.5,
            );
            for i in 0..b {
                let idx: Vec<i64> = (0..n).filter(|&j| valid[i * n + j]).map(|j| j as i64).collect();
                let sel = boxes.get(i as i64).index_select(0, &Tensor::from_slice(&idx));
                let scores = Tensor::arange(idx.len() as i64, (Kind::Float, tch::Device::Cpu)).neg();
                let want: Vec<usize> = v(&nms(&sel, &scores, 0.5))
                    .iter()
                    .map(|&k| idx[k as usize] as usize)
                    .collect();
                assert_eq!(got[0][i], want, "n {n} problem {i}");
            }
        }
    }

    #[test]
    fn batched_iou_equals_box_iou_bit_for_bit() {
        let b = boxes_from_rows(&[[0., 0., 10., 10.], [1.5, 0.25, 11., 10.], [3., 3., 4., 9.]]);
        let one = box_iou(&b, &b);
        let many = batched_box_iou(&Tensor::stack(&[&b, &b], 0));
        assert_eq!(
            Vec::<f32>::try_from(one.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(many.get(1).flatten(0, -1)).unwrap()
        );
    }

    #[test]
    fn batched_keeps_groups_apart() {
        let b = boxes_from_rows(&[[0., 0., 10., 10.], [0., 0., 10., 10.], [1., 1., 10., 10.]]);
        let s = Tensor::from_slice(&[0.9f32, 0.8, 0.7]);
        let g = Tensor::from_slice(&[0i64, 1, 0]);
        assert_eq!(v(&batched_nms(&b, &s, &g, 0.5)), vec![0, 1]);
        let empty = Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu));
        let e = Tensor::zeros([0], (Kind::Float, tch::Device::Cpu));
        assert_eq!(
            batched_nms(&empty, &e, &e.to_kind(Kind::Int64), 0.5).size(),
            vec![0]
        );
    }
}

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

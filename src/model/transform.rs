//! Port of torchvision `GeneralizedRCNNTransform` (spec §2.1): grey copied to 3 channels,
//! ImageNet normalisation, resize so the short side is `min_size` (the long side at most
//! `max_size`, bilinear, align_corners=False), zero padding to a multiple of 32, and the
//! post-processing that scales boxes back to the input size and pastes the 28x28 masks.

use tch::{Device, Kind, Tensor};

use super::config::ModelConfig;

/// A padded batch and the size of each resized image in it.
#[derive(Debug)]
pub struct ImageBatch {
    /// `[N, 3, H_pad, W_pad]`, normalised.
    pub tensors: Tensor,
    /// `(h, w)` of each image after resizing, before padding.
    pub image_sizes: Vec<(i64, i64)>,
    /// `(h, w)` of each input image.
    pub original_sizes: Vec<(i64, i64)>,
}

/// `[3, H, W]` float in [0, 1] from interleaved 8-bit RGB (what PIL's `ToTensor` gives).
pub fn tensor_from_rgb(rgb: &[u8], width: u32, height: u32, device: Device) -> crate::Result<Tensor> {
    let (w, h) = (width as i64, height as i64);
    if w == 0 || h == 0 || rgb.len() as i64 != w * h * 3 {
        return Err(crate::Error::Input(format!(
            "image of {width}x{height} needs {} RGB bytes, got {}",
            w * h * 3,
            rgb.len()
        )));
    }
    // on CUDA from pinned memory without blocking: the host goes on queueing work
    let bytes = crate::ops::host::upload(Tensor::from_slice(rgb), device);
    Ok(bytes.view([h, w, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0)
}

/// Resized output size and scale for an `(h, w)` image.
pub fn resized_size(h: i64, w: i64, min_size: i64, max_size: i64) -> (i64, i64, f64) {
    let (mn, mx) = (h.min(w) as f64, h.max(w) as f64);
    let scale = (min_size as f64 / mn).min(max_size as f64 / mx);
    (
        (h as f64 * scale).floor() as i64,
        (w as f64 * scale).floor() as i64,
        scale,
    )
}

/// Normalise, resize and pad a list of `[3, H, W]` images.
pub fn batch_images(images: &[Tensor], cfg: &ModelConfig) -> crate::Result<ImageBatch> {
    if images.is_empty() {
        return Err(crate::Error::Input("no images given".into()));
    }
    let mut resized = Vec::with_capacity(images.len());
    let mut image_sizes = Vec::new();
    let mut original_sizes = Vec::new();
    for img in images {
        let s = img.size();
        if s.len() != 3 || s[0] != 3 || s[1] == 0 || s[2] == 0 {
            return Err(crate::Error::Input(format!(
                "image tensor must be [3, H, W] with H, W > 0, got {s:?}"
            )));
        }
        let device = img.device();
        let mean = Tensor::from_slice(&cfg.transform.image_mean.map(|v| v as f32))
            .to_device(device)
            .view([3, 1, 1]);
        let std = Tensor::from_slice(&cfg.transform.image_std.map(|v| v as f32))
            .to_device(device)
            .view([3, 1, 1]);
        let x = (img.to_kind(Kind::Float) - mean) / std;
        let (h, w) = (s[1], s[2]);
        let (rh, rw, _) = resized_size(h, w, cfg.transform.min_size, cfg.transform.max_size);
        let x = if (rh, rw) == (h, w) {
            x
        } else {
            x.unsqueeze(0)
                .upsample_bilinear2d([rh, rw], false, None, None)
                .squeeze_dim(0)
        };
        original_sizes.push((h, w));
        image_sizes.push((rh, rw));
        resized.push(x);
    }
    let d = cfg.transform.size_divisible;
    let round_up = |v: i64| (v + d - 1) / d * d;
    let ph = round_up(image_sizes.iter().map(|s| s.0).max().unwrap_or(0));
    let pw = round_up(image_sizes.iter().map(|s| s.1).max().unwrap_or(0));
    let padded: Vec<Tensor> = resized
        .iter()
        .zip(&image_sizes)
        .map(|(x, &(h, w))| {
            if (h, w) == (ph, pw) {
                x.shallow_clone()
            } else {
                x.constant_pad_nd([0, pw - w, 0, ph - h])
            }
        })
        .collect();
    Ok(ImageBatch {
        tensors: Tensor::stack(&padded, 0),
        image_sizes,
        original_sizes,
    })
}

/// Scale boxes from the resized image back to the original one.
pub fn resize_boxes(boxes: &Tensor, resized: (i64, i64), original: (i64, i64)) -> Tensor {
    let rh = original.0 as f32 / resized.0 as f32;
    let rw = original.1 as f32 / resized.1 as f32;
    if rh == 1.0 && rw == 1.0 {
        return boxes.shallow_clone();
    }
    let scale = Tensor::from_slice(&[rw, rh, rw, rh]).to_device(boxes.device());
    boxes * scale
}

/// Paste `[K, M, M]` masks into `[K, H, W]` images at `boxes` (torchvision
/// `paste_masks_in_image`: pad by one pixel, grow the box by (M+2)/M, truncate to integers,
/// bilinear-resize to the box and copy the part inside the image).
///
/// On the CPU each box is resized and copied in turn; on CUDA every box at once
/// ([`paste_masks_gathered`]), with no read of the boxes on the host.
pub fn paste_masks(masks: &Tensor, boxes: &Tensor, (im_h, im_w): (i64, i64)) -> Tensor {
    let k = masks.size()[0];
    let device = masks.device();
    if device.is_cuda() && k > 0 {
        return paste_masks_gathered(masks, boxes, (im_h, im_w));
    }
    let out = Tensor::zeros([k, im_h, im_w], (masks.kind(), device));
    if k == 0 {
        return out;
    }
    let m = masks.size()[2];
    let padded = masks.constant_pad_nd([1, 1, 1, 1]);
    let expanded = expanded_boxes(boxes, m).to_device(Device::Cpu);
    let rows: Vec<Vec<i64>> = Vec::try_from(expanded).expect("int64 boxes convert");
    for (i, b) in rows.iter().enumerate() {
        let w = (b[2] - b[0] + 1).max(1);
        let h = (b[3] - b[1] + 1).max(1);
        let resized = padded
            .get(i as i64)
            .view([1, 1, m + 2, m + 2])
            .upsample_bilinear2d([h, w], false, None, None)
            .view([h, w]);
        let x0 = b[0].max(0);
        let x1 = (b[2] + 1).min(im_w);
        let y0 = b[1].max(0);
        let y1 = (b[3] + 1).min(im_h);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let src = resized
            .narrow(0, y0 - b[1], y1 - y0)
            .narrow(1, x0 - b[0], x1 - x0);
        out.get(i as i64)
            .narrow(0, y0, y1 - y0)
            .narrow(1, x0, x1 - x0)
            .copy_(&src);
    }
    out
}

/// The boxes grown by `(M + 2) / M` around their centres for masks padded by one pixel, truncated
/// to integers: `[K, 4]` int64 on the boxes' device (torchvision's `expand_boxes`).
fn expanded_boxes(boxes: &Tensor, m: i64) -> Tensor {
    let scale = (m + 2) as f64 / m as f64;
    let x1 = boxes.select(1, 0);
    let y1 = boxes.select(1, 1);
    let x2 = boxes.select(1, 2);
    let y2 = boxes.select(1, 3);
    let w_half = (&x2 - &x1) * 0.5 * scale;
    let h_half = (&y2 - &y1) * 0.5 * scale;
    let xc = (&x2 + &x1) * 0.5;
    let yc = (&y2 + &y1) * 0.5;
    Tensor::stack(&[&xc - &w_half, &yc - &h_half, &xc + &w_half, &yc + &h_half], 1).to_kind(Kind::Int64)
}

/// [`paste_masks`] of every box at once, on the masks' device: `upsample_bilinear2d`'s sampling
/// (align_corners false, scale `(M + 2) / size` in float32, source index clamped at 0, the
/// upper neighbour only inside the input) written as two gathers, columns first and then rows,
/// so each value is `l0y * (l0x v00 + l1x v01) + l1y * (l0x v10 + l1x v11)` in the kernel's
/// order. Memory: a few `[K, H, W]` float tensors (no `[K, H, W]` index is materialised).
pub fn paste_masks_gathered(masks: &Tensor, boxes: &Tensor, (im_h, im_w): (i64, i64)) -> Tensor {
    let k = masks.size()[0];
    let m = masks.size()[2];
    let device = masks.device();
    let kind = masks.kind();
    let padded = masks.constant_pad_nd([1, 1, 1, 1]); // [K, m+2, m+2]
    let ex = expanded_boxes(boxes, m); // [K, 4]
    let p = m + 2;
    // one axis: for output positions 0..size, the box's source indices, weights and inside flag
    let axis = |lo: Tensor, hi: Tensor, size: i64| {
        let len = (&hi - &lo + 1).clamp_min(1); // [K]
        let pos = Tensor::arange(size, (Kind::Int64, device)).unsqueeze(0); // [1, size]
        let d = &pos - lo.unsqueeze(1); // [K, size]
        let inside = pos
            .ge_tensor(&lo.clamp_min(0).unsqueeze(1))
            .logical_and(&pos.lt_tensor(&(&hi + 1).clamp_max(size).unsqueeze(1)));
        let sc =
            Tensor::full([k, 1], p as f64, (Kind::Float, device)) / len.to_kind(Kind::Float).unsqueeze(1);
        let src = ((d.to_kind(Kind::Float) + 0.5) * sc - 0.5).clamp_min(0.0);
        let i0 = src.to_kind(Kind::Int64).clamp(0, p - 1); // truncation (src >= 0); clamp for outside
        let i1 = (&i0 + i0.lt(p - 1).to_kind(Kind::Int64)).clamp_max(p - 1);
        let l1 = &src - i0.to_kind(Kind::Float);
        let l0 = (-&l1 + 1.0).to_kind(kind); // 1 - l1, exactly
        let l1 = l1.to_kind(kind);
        (i0, i1, l0, l1, inside)
    };
    let (x0i, x1i, lx0, lx1, in_x) = axis(ex.select(1, 0), ex.select(1, 2), im_w);
    let (y0i, y1i, ly0, ly1, in_y) = axis(ex.select(1, 1), ex.select(1, 3), im_h);
    // columns: [K, p, W]
    let gx = |i: &Tensor| padded.gather(2, &i.unsqueeze(1).expand([k, p, im_w], false), false);
    let cols = lx0.unsqueeze(1) * gx(&x0i) + lx1.unsqueeze(1) * gx(&x1i);
    // rows: [K, H, W]
    let gy = |i: &Tensor| cols.gather(1, &i.unsqueeze(2).expand([k, im_h, im_w], false), false);
    let out = ly0.unsqueeze(2) * gy(&y0i) + ly1.unsqueeze(2) * gy(&y1i);
    let inside = in_y.unsqueeze(2).logical_and(&in_x.unsqueeze(1));
    out.where_self(&inside, &Tensor::zeros([], (kind, device)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_paste_equals_the_per_box_paste() {
        // random masks and boxes (some partly outside the image, one tiny), CPU both ways
        let mut g = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        use rand::{Rng, SeedableRng};
        let k = 12;
        let vals: Vec<f32> = (0..k * 28 * 28).map(|_| g.gen_range(-4.0..4.0f32)).collect();
        let masks = Tensor::from_slice(&vals).view([k, 28, 28]);
        let mut rows = Vec::new();
        for i in 0..k {
            let (x, y) = (g.gen_range(-20.0..90.0f32), g.gen_range(-20.0..60.0f32));
            let (w, h) = if i == 0 {
                (0.4, 0.7)
            } else {
                (g.gen_range(1.0..60.0f32), g.gen_range(1.0..50.0f32))
            };
            rows.extend([x, y, x + w, y + h]);
        }
        let boxes = Tensor::from_slice(&rows).view([k, 4]);
        let a = paste_masks(&masks, &boxes, (70, 96));
        let b = paste_masks_gathered(&masks, &boxes, (70, 96));
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max difference {diff}");
        assert_eq!(
            a.gt(0.5).sum(Kind::Int64).int64_value(&[]),
            b.gt(0.5).sum(Kind::Int64).int64_value(&[])
        );
        assert!(
            a.abs().sum(Kind::Float).double_value(&[]) > 100.0,
            "the boxes paste something"
        );
    }

    #[test]
    fn resize_rule() {
        assert_eq!(resized_size(512, 512, 512, 1024), (512, 512, 1.0));
        assert_eq!(resized_size(256, 128, 512, 1024), (1024, 512, 4.0));
        let (h, w, s) = resized_size(100, 400, 512, 1024);
        assert_eq!((h, w), (256, 1024));
        assert!((s - 2.56).abs() < 1e-12);
    }

    #[test]
    fn batch_normalises_and_pads() {
        let img = Tensor::ones([3, 500, 512], (Kind::Float, Device::Cpu)) * 0.5;
        let mut cfg = ModelConfig::r50_fpn4();
        cfg.transform.min_size = 500;
        let b = batch_images(&[img], &cfg).unwrap();
        assert_eq!(b.tensors.size(), vec![1, 3, 512, 512]);
        assert_eq!(b.image_sizes, vec![(500, 512)]);
        let v = b.tensors.double_value(&[0, 0, 0, 0]);
        assert!((v - (0.5 - 0.485) / 0.229).abs() < 1e-6);
        assert_eq!(b.tensors.double_value(&[0, 0, 505, 0]), 0.0);
        assert!(batch_images(&[Tensor::ones([1, 4, 4], (Kind::Float, Device::Cpu))], &cfg).is_err());
        assert!(tensor_from_rgb(&[0; 5], 2, 2, Device::Cpu).is_err());
    }

    #[test]
    fn paste_fills_the_expanded_box() {
        let masks = Tensor::ones([1, 28, 28], (Kind::Float, Device::Cpu));
        let boxes = Tensor::from_slice(&[10f32, 20., 38., 48.]).view([1, 4]);
        let out = paste_masks(&masks, &boxes, (64, 64));
        // box grown by 30/28 around (24, 34): [9, 19, 39, 49]; inner area is fully 1
        assert_eq!(out.double_value(&[0, 34, 24]), 1.0);
        assert_eq!(out.double_value(&[0, 5, 5]), 0.0);
        let inside = out.gt(0.5).sum(Kind::Int64).int64_value(&[]);
        assert!(inside > 28 * 28 && inside <= 31 * 31, "{inside}");
    }
}

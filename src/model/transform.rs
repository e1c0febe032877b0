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
    Ok(Tensor::from_slice(rgb)
        .to_device(device)
        .view([h, w, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0)
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
pub fn paste_masks(masks: &Tensor, boxes: &Tensor, (im_h, im_w): (i64, i64)) -> Tensor {
    let k = masks.size()[0];
    let device = masks.device();
    let out = Tensor::zeros([k, im_h, im_w], (masks.kind(), device));
    if k == 0 {
        return out;
    }
    let m = masks.size()[2];
    let scale = (m + 2) as f64 / m as f64;
    let padded = masks.constant_pad_nd([1, 1, 1, 1]);
    let x1 = boxes.select(1, 0);
    let y1 = boxes.select(1, 1);
    let x2 = boxes.select(1, 2);
    let y2 = boxes.select(1, 3);
    let w_half = (&x2 - &x1) * 0.5 * scale;
    let h_half = (&y2 - &y1) * 0.5 * scale;
    let xc = (&x2 + &x1) * 0.5;
    let yc = (&y2 + &y1) * 0.5;
    let expanded = Tensor::stack(&[&xc - &w_half, &yc - &h_half, &xc + &w_half, &yc + &h_half], 1)
        .to_kind(Kind::Int64)
        .to_device(Device::Cpu);
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

#[cfg(test)]
mod tests {
    use super::*;

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

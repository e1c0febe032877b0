//! Deterministic weights shared with the Python reference (`docs/deterministic-weights.md`):
//! every tensor is filled from a counter-based generator keyed by its checkpoint name, so parity
//! tests and side-by-side benchmarks use identical weights in Rust and PyTorch without shipping
//! hundreds of megabytes of tensors.

use tch::{Kind, Tensor};

use super::MaskRcnn;

/// FNV-1a 64 of a key.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `u(name, i)` in [-1, 1) for i in 0..n.
pub fn uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f64) / 16_777_216.0 * 2.0 - 1.0
        })
        .collect()
}

/// Whether `name` is scaled by 0.1 (the last BN of a residual branch, or a predictor output).
fn scaled(name: &str, basic_block: bool) -> bool {
    const HEADS: [&str; 5] = [
        "rpn.head.cls_logits.weight",
        "rpn.head.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
    ];
    if HEADS.contains(&name) {
        return true;
    }
    let last_bn = if basic_block { ".bn2.weight" } else { ".bn3.weight" };
    // layer<k>.<i>.bn<j>.weight
    name.ends_with(last_bn)
        && name
            .rsplit_once(".bn")
            .map(|(head, _)| {
                let mut parts = head.rsplit('.');
                let block = parts.next().unwrap_or("");
                let layer = parts.next().unwrap_or("");
                block.chars().all(|c| c.is_ascii_digit())
                    && !block.is_empty()
                    && layer.starts_with("layer")
                    && layer[5..].chars().all(|c| c.is_ascii_digit())
            })
            .unwrap_or(false)
}

/// The deterministic value of a tensor named `name` with `shape`; `basic_block`: the model's
/// residual blocks have no `bn3`.
pub fn tensor_for(name: &str, shape: &[i64], basic_block: bool) -> Tensor {
    if name.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, (Kind::Int64, tch::Device::Cpu));
    }
    let n: i64 = shape.iter().product();
    let u = uniform(name, n as usize);
    let is_bn = name.contains("bn") || name.contains("downsample.1");
    let factor = if scaled(name, basic_block) {
        Some(0.1)
    } else {
        None
    };
    let finish = |v: f64| match factor {
        Some(f) => (v * f) as f32,
        None => v as f32,
    };
    let vals: Vec<f32> = if name.ends_with("running_var") {
        u.iter().map(|v| finish(1.25 + 0.25 * v)).collect()
    } else if name.ends_with("running_mean") {
        u.iter().map(|v| finish(0.1 * v)).collect()
    } else if shape.len() == 1 && is_bn && name.ends_with("weight") {
        u.iter().map(|v| finish(1.0 + 0.1 * v)).collect()
    } else if shape.len() <= 1 {
        u.iter().map(|v| finish(0.05 * v)).collect()
    } else {
        let fan_in: i64 = shape[1..].iter().product();
        let a = 3f64.sqrt();
        let b = (2.0 / fan_in as f64).sqrt();
        u.iter().map(|v| finish(v * a * b)).collect()
    };
    Tensor::from_slice(&vals).reshape(shape)
}

/// Fill every variable of `model` deterministically.
pub fn fill(model: &MaskRcnn) {
    let vars = model.vs.variables();
    let basic = !vars.keys().any(|k| k.contains(".bn3."));
    tch::no_grad(|| {
        for (name, var) in vars {
            let mut var = var;
            let v = tensor_for(&name, &var.size(), basic)
                .to_device(var.device())
                .to_kind(var.kind());
            var.copy_(&v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_pinned() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        let u = uniform("rpn.head.conv.weight", 3);
        assert!(u.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_ne!(u[0], u[1]);
        let u = uniform("backbone.body.conv1.weight", 4);
        let want = [-0.0472728, -0.63229465, -0.15841043, 0.85905576];
        assert!(u.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-7), "{u:?}");
        assert!(scaled("backbone.body.layer1.0.bn3.weight", false));
        assert!(!scaled("backbone.body.layer1.0.bn3.weight", true));
        assert!(scaled("backbone.body.layer3.1.bn2.weight", true));
        assert!(!scaled("backbone.body.bn1.weight", true));
        assert!(scaled("rpn.head.cls_logits.weight", false));
        assert!(!scaled("rpn.head.cls_logits.bias", false));
        let t = tensor_for("backbone.body.bn1.running_var", &[4], false);
        let v: Vec<f32> = Vec::try_from(t).unwrap();
        assert!(v.iter().all(|x| (1.0..=1.5).contains(x)));
    }
}

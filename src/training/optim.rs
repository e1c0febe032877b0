//! Adam with L2 weight decay folded into the gradient (torch.optim.Adam's `weight_decay`, not
//! AdamW), written out so its state can be saved next to a checkpoint and training resumed
//! exactly (`--resume`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::{Error, Result};

#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub step: i64,
    /// (name, parameter, first moment, second moment)
    params: Vec<(String, Tensor, Tensor, Tensor)>,
}

impl Adam {
    /// Adam over named parameters (they must require grad).
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Self {
        let params = params
            .into_iter()
            .map(|(n, p)| {
                let m = p.zeros_like().detach();
                let v = p.zeros_like().detach();
                (n, p, m, v)
            })
            .collect();
        Adam {
            lr,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            step: 0,
            params,
        }
    }

    /// Number of optimised scalars.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.1.numel()).sum()
    }

    /// Names of the optimised parameters.
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.0.as_str()).collect()
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update, as torch.optim.Adam does it.
    pub fn step(&mut self) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = self.lr / bc1;
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = v.g_mul_scalar_(b2).g_add_(&(&g * &g * (1.0 - b2)));
                let denom = (v.sqrt() / bc2.sqrt()) + self.eps;
                let _ = p.g_sub_(&(&*m / denom * step_size));
            }
        });
    }

    /// Save the state (moments and step) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named = Vec::new();
        for (n, _, m, v) in &self.params {
            named.push((format!("m.{n}"), m.shallow_clone()));
            named.push((format!("v.{n}"), v.shallow_clone()));
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("optim")
        ));
        Tensor::write_safetensors(&named, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restore the state saved by [`Adam::save`]; every parameter must be present.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let t: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let get = |k: &str| {
            t.get(k)
                .ok_or_else(|| Error::model_file(path, format!("optimizer state lacks {k}")))
        };
        self.step = get("step")?.int64_value(&[0]);
        tch::no_grad(|| -> Result<()> {
            for (n, _, m, v) in &mut self.params {
                m.copy_(&get(&format!("m.{n}"))?.to_kind(Kind::Float).to_device(m.device()));
                v.copy_(&get(&format!("v.{n}"))?.to_kind(Kind::Float).to_device(v.device()));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_adam_on_a_quadratic() {
        // torch.optim.Adam([x], lr=0.1, weight_decay=0.01) on f(x) = x^2 from x = 1.0, 3 steps:
        // 0.9, 0.8004122, 0.7015862 (values from PyTorch 2.11)
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Adam::new(vec![("x".into(), x.shallow_clone())], 0.1, 0.01);
        let mut xs = Vec::new();
        for _ in 0..3 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Float).backward();
            opt.step();
            xs.push(x.double_value(&[0]));
        }
        for (g, w) in xs
            .iter()
            .zip([0.8999999761581421, 0.8004121780395508, 0.7015862464904785])
        {
            assert!((g - w).abs() < 1e-6, "{xs:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.safetensors");
        opt.save(&p).unwrap();
        let y = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let mut o2 = Adam::new(vec![("x".into(), y)], 0.1, 0.01);
        o2.load(&p).unwrap();
        assert_eq!(o2.step, 3);
    }
}

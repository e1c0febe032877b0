//! Small layers shared by the model files: convolutions and linears whose parameter paths are the
//! checkpoint keys, and batch norm in both forms the original used (BatchNorm2d, eps 1e-5, with
//! `num_batches_tracked`; torchvision 0.3.0's FrozenBatchNorm2d with no eps and no counter).

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// A 2-D convolution (`weight`, optional `bias`).
pub fn conv2d(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias,
            ws_init: Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

/// A linear layer (`weight [out, in]`, `bias [out]`) with PyTorch's default init.
pub fn linear(p: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    nn::linear(p, cin, cout, Default::default())
}

/// Batch norm with running statistics. In eval it computes
/// `x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))` in one fused libtorch pass (eps 0
/// gives torchvision 0.3.0's FrozenBatchNorm2d); in training, batch statistics update the
/// running ones.
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Option<Tensor>,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(p: nn::Path, c: i64, eps: f64, track: bool) -> Self {
        let weight = p.var("weight", &[c], Init::Const(1.0));
        let bias = p.var("bias", &[c], Init::Const(0.0));
        let running_mean = p.zeros_no_train("running_mean", &[c]);
        let running_var = p.ones_no_train("running_var", &[c]);
        let num_batches_tracked = track.then(|| {
            p.add(
                "num_batches_tracked",
                Tensor::zeros([], (Kind::Int64, p.device())),
                false,
            )
        });
        BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps,
        }
    }

    /// `train`: use batch statistics and update the running ones (momentum 0.1).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            if let Some(n) = &self.num_batches_tracked {
                let mut n = n.shallow_clone();
                let _ = tch::no_grad(|| n.g_add_scalar_(1));
            }
            return Tensor::batch_norm(
                x,
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                true,
                0.1,
                self.eps,
                false,
            );
        }
        // running statistics: one fused pass, differentiable in the affine parameters (the
        // classifier trains them with the statistics frozen)
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            self.eps,
            false,
        )
    }
}

/// `conv -> relu` helper for heads.
pub fn conv_relu(conv: &nn::Conv2D, x: &Tensor) -> Tensor {
    conv.forward(x).relu()
}

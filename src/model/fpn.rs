//! Feature pyramid (port of torchvision `ops/feature_pyramid_network.py`): 1x1 lateral convs,
//! nearest top-down upsampling, 3x3 output convs, and optionally the `LastLevelMaxPool` level
//! (`max_pool2d(P_last, 1, 2, 0)`) that the released full weights have (spec §2.2).

use tch::Tensor;
use tch::nn::{self, Init, Module};

#[derive(Debug)]
pub struct Fpn {
    inner_blocks: Vec<nn::Conv2D>,
    layer_blocks: Vec<nn::Conv2D>,
    pool_level: bool,
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            padding: k / 2,
            ws_init: Init::Kaiming {
                dist: nn::init::NormalOrUniform::Uniform,
                fan: nn::init::FanInOut::FanIn,
                non_linearity: nn::init::NonLinearity::ExplicitGain(1.0),
            },
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

impl Fpn {
    pub fn new(p: nn::Path, in_channels: &[i64], out: i64, pool_level: bool) -> Self {
        let inner = &p / "inner_blocks";
        let layer = &p / "layer_blocks";
        Fpn {
            inner_blocks: in_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| conv(&inner / i, c, out, 1))
                .collect(),
            layer_blocks: (0..in_channels.len())
                .map(|i| conv(&layer / i, out, out, 3))
                .collect(),
            pool_level,
        }
    }

    /// Body maps (finest first) -> FPN maps (finest first, then 'pool').
    pub fn forward(&self, xs: &[Tensor]) -> Vec<Tensor> {
        let n = xs.len();
        let mut last = self.inner_blocks[n - 1].forward(&xs[n - 1]);
        let mut results = vec![self.layer_blocks[n - 1].forward(&last)];
        for i in (0..n - 1).rev() {
            let lateral = self.inner_blocks[i].forward(&xs[i]);
            let size = lateral.size();
            let top_down = last.upsample_nearest2d([size[2], size[3]], None, None);
            last = lateral + top_down;
            results.insert(0, self.layer_blocks[i].forward(&last));
        }
        if self.pool_level {
            let p = results[results.len() - 1].max_pool2d([1, 1], [2, 2], [0, 0], [1, 1], false);
            results.push(p);
        }
        results
    }
}

//! ResNet18/34/50 bodies returning the feature maps the FPN needs (port of torchvision
//! `models/resnet.py` as COVID-CT-Mask-Net's `models/resnet.py` truncates it, spec §2.2), plus the
//! `BackboneWithFpn` that joins body and FPN.

use tch::Tensor;
use tch::nn::{self, Module};

use super::config::{BackboneKind, ModelConfig};
use super::fpn::Fpn;
use super::layers::{BatchNorm, conv2d};

/// One residual block: BasicBlock (ResNet18/34) or Bottleneck (ResNet50, stride on conv2).
#[derive(Debug)]
struct Block {
    convs: Vec<nn::Conv2D>,
    bns: Vec<BatchNorm>,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            y = bn.forward_t(&conv.forward(&y), train);
            if i != last {
                y = y.relu();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x), train),
            None => x.shallow_clone(),
        };
        (y + identity).relu()
    }
}

/// The ResNet body up to the last layer the FPN uses (IntermediateLayerGetter drops the rest).
#[derive(Debug)]
pub struct ResnetBody {
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
    /// Indices (0-based, layer1 = 0) of the layers whose outputs are returned.
    returned: Vec<usize>,
    /// Channels of each returned map.
    pub out_channels: Vec<i64>,
}

impl ResnetBody {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let (bottleneck, blocks) = match cfg.backbone {
            BackboneKind::Resnet18 => (false, [2, 2, 2, 2]),
            BackboneKind::Resnet34 => (false, [3, 4, 6, 3]),
            BackboneKind::Resnet50 => (true, [3, 4, 6, 3]),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let returned: Vec<usize> = match (cfg.backbone, cfg.truncation) {
            (BackboneKind::Resnet50, _) => vec![0, 1, 2, 3],
            (_, 0) => vec![3],
            (_, 1) => vec![2],
            _ => vec![1],
        };
        let n_layers = returned.last().copied().unwrap_or(3) + 1;
        let eps = cfg.bn_eps;
        let track = cfg.bn_num_batches_tracked;
        let conv1 = conv2d(&p / "conv1", 3, 64, 7, 2, 3, false);
        let bn1 = BatchNorm::new(&p / "bn1", 64, eps, track);
        let mut inplanes = 64;
        let mut layers = Vec::new();
        let mut channels = Vec::new();
        for (li, &count) in blocks.iter().enumerate().take(n_layers) {
            let planes = 64 << li;
            let stride = if li == 0 { 1 } else { 2 };
            let lp = &p / format!("layer{}", li + 1);
            let mut layer = Vec::new();
            for bi in 0..count {
                let bp = &lp / bi;
                let s = if bi == 0 { stride } else { 1 };
                let downsample = (bi == 0 && (s != 1 || inplanes != planes * expansion)).then(|| {
                    let dp = &bp / "downsample";
                    (
                        conv2d(&dp / 0, inplanes, planes * expansion, 1, s, 0, false),
                        BatchNorm::new(&dp / 1, planes * expansion, eps, track),
                    )
                });
                let (convs, bns) = if bottleneck {
                    (
                        vec![
                            conv2d(&bp / "conv1", inplanes, planes, 1, 1, 0, false),
                            conv2d(&bp / "conv2", planes, planes, 3, s, 1, false),
                            conv2d(&bp / "conv3", planes, planes * 4, 1, 1, 0, false),
                        ],
                        vec![
                            BatchNorm::new(&bp / "bn1", planes, eps, track),
                            BatchNorm::new(&bp / "bn2", planes, eps, track),
                            BatchNorm::new(&bp / "bn3", planes * 4, eps, track),
                        ],
                    )
                } else {
                    (
                        vec![
                            conv2d(&bp / "conv1", inplanes, planes, 3, s, 1, false),
                            conv2d(&bp / "conv2", planes, planes, 3, 1, 1, false),
                        ],
                        vec![
                            BatchNorm::new(&bp / "bn1", planes, eps, track),
                            BatchNorm::new(&bp / "bn2", planes, eps, track),
                        ],
                    )
                };
                layer.push(Block {
                    convs,
                    bns,
                    downsample,
                });
                inplanes = planes * expansion;
            }
            channels.push(inplanes);
            layers.push(layer);
        }
        let out_channels = returned.iter().map(|&i| channels[i]).collect();
        ResnetBody {
            conv1,
            bn1,
            layers,
            returned,
            out_channels,
        }
    }

    /// `[N, 3, H, W]` -> the returned maps, finest first (C2..C5 for ResNet50).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        let mut y = self.bn1.forward_t(&self.conv1.forward(x), train).relu();
        y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for block in layer {
                y = block.forward_t(&y, train);
            }
            if self.returned.contains(&i) {
                out.push(y.shallow_clone());
            }
        }
        out
    }
}

/// `backbone.body` + `backbone.fpn`.
#[derive(Debug)]
pub struct BackboneWithFpn {
    pub body: ResnetBody,
    pub fpn: Fpn,
}

impl BackboneWithFpn {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let body = ResnetBody::new(&p / "body", cfg);
        let fpn = Fpn::new(
            &p / "fpn",
            &body.out_channels,
            ModelConfig::FPN_CHANNELS,
            cfg.fpn_pool_level,
        );
        BackboneWithFpn { body, fpn }
    }

    /// Feature maps of all FPN levels (the pool level last, when present).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Vec<Tensor> {
        self.fpn.forward(&self.body.forward_t(x, train))
    }
}

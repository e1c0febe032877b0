//! `ctmask segment`: run a segmentation model on slices and report the lesions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::device::DeviceChoice;
use crate::model::{Detections, MaskRcnn};

#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// The segmentation model (a ctmask .safetensors file).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to run: auto (CUDA when usable), cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Mask probability threshold (default sigmoid(0.5) = 0.6225: the original's logit > 0.5).
    #[arg(long)]
    pub mask_threshold: Option<f64>,
    /// Write the results of all inputs as a JSON array to this file ("-" for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Slice files (PNG or JPEG).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// One detection in the JSON output.
#[derive(Debug, Serialize)]
pub struct DetectionJson {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub label: i64,
    pub class: String,
    pub score: f32,
    pub mask_area_px: u64,
}

/// The JSON output for one input.
#[derive(Debug, Serialize)]
pub struct SegmentJson {
    pub input: String,
    pub width: i64,
    pub height: i64,
    pub detections: Vec<DetectionJson>,
}

/// Read a PNG/JPEG into the `[3, H, W]` tensor the model takes (PIL `convert('RGB')`).
pub fn read_image(path: &Path, device: tch::Device) -> anyhow::Result<tch::Tensor> {
    let img = image::open(path).with_context(|| format!("{}: cannot read image", path.display()))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(crate::model::transform::tensor_from_rgb(
        rgb.as_raw(),
        w,
        h,
        device,
    )?)
}

/// Turn detections into JSON rows.
pub fn detections_json(
    model: &MaskRcnn,
    d: &Detections,
    threshold: f64,
) -> anyhow::Result<Vec<DetectionJson>> {
    let boxes: Vec<Vec<f32>> = Vec::try_from(d.boxes.to_device(tch::Device::Cpu))?;
    let scores: Vec<f32> = Vec::try_from(d.scores.to_device(tch::Device::Cpu))?;
    let labels: Vec<i64> = Vec::try_from(d.labels.to_device(tch::Device::Cpu))?;
    let areas: Vec<i64> = match d.binary_masks(threshold) {
        Some(m) if !labels.is_empty() => Vec::try_from(
            m.sum_dim_intlist([1i64, 2].as_slice(), false, tch::Kind::Int64)
                .to_device(tch::Device::Cpu),
        )?,
        _ => vec![0; labels.len()],
    };
    Ok(boxes
        .iter()
        .zip(&scores)
        .zip(&labels)
        .zip(&areas)
        .map(|(((b, &s), &l), &a)| DetectionJson {
            bbox: [b[0], b[1], b[2], b[3]],
            label: l,
            class: model
                .cfg
                .class_names
                .get((l - 1).max(0) as usize)
                .cloned()
                .unwrap_or_else(|| format!("class{l}")),
            score: s,
            mask_area_px: a.max(0) as u64,
        })
        .collect())
}

pub fn run(a: &SegmentArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let model = MaskRcnn::load(&a.model, device)?;
    let threshold = a
        .mask_threshold
        .unwrap_or_else(crate::model::default_mask_threshold);
    anyhow::ensure!(
        (0.0..1.0).contains(&threshold) && threshold > 0.0,
        "--mask-threshold must be within (0, 1), got {threshold}"
    );
    let mut out = Vec::new();
    for input in &a.inputs {
        let img = read_image(input, device)?;
        let dets = model.detect(std::slice::from_ref(&img))?;
        let d = &dets[0];
        let rows = detections_json(&model, d, threshold)?;
        tracing::info!(input = %input.display(), detections = rows.len(), "segmented");
        out.push(SegmentJson {
            input: input.display().to_string(),
            width: d.image_size.1,
            height: d.image_size.0,
            detections: rows,
        });
    }
    let text = serde_json::to_string_pretty(&out)?;
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{text}"),
        Some(p) => crate::fsutil::write_atomic(p, text.as_bytes())?,
        None => {
            for s in &out {
                println!("{}: {} detection(s)", s.input, s.detections.len());
                for d in &s.detections {
                    println!(
                        "  {:<13} score {:.3} box [{:.1}, {:.1}, {:.1}, {:.1}] mask {} px",
                        d.class, d.score, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.mask_area_px
                    );
                }
            }
        }
    }
    Ok(())
}

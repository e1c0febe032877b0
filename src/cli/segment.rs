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
    /// fp32 (parity), or bf16 / fp16 for the backbone on CUDA.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: crate::config::Precision,
    /// Also write, per input, `<name>_mask.png` (0 background, 1 GGO or lesion, 2 consolidation),
    /// `<name>_overlay.png` (GGO red, consolidation blue, dashed boxes) and `<name>.json` here.
    /// The mask and overlay show the counted lesions, as the daemon's do: inside the lung field
    /// (lung gate 0.5) and scoring at least `--min-counted-score`; the JSON lists every
    /// detection, each flagged `outside_lung` / `low_score` when not counted.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With `--out`: detections scoring below this are listed, not painted (the daemon's
    /// `screening.min_counted_score`, 0.75 by default; 0 paints every detection, as the
    /// original's inference script draws them).
    #[arg(long, default_value_t = 0.75)]
    pub min_counted_score: f64,
    /// Slice files (PNG, JPEG or DICOM).
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
    /// With `--out`: left out of the mask and overlay by the lung gate.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outside_lung: bool,
    /// With `--out`: scored below `--min-counted-score`, left out of the mask and overlay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub low_score: bool,
}

/// The JSON output for one input (one entry per frame of a multi-frame file).
#[derive(Debug, Serialize)]
pub struct SegmentJson {
    pub input: String,
    /// Frame index inside a multi-frame object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    pub width: i64,
    pub height: i64,
    pub detections: Vec<DetectionJson>,
    /// Why the input was refused or failed (then it has no detections).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
            outside_lung: false,
            low_score: false,
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
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.min_counted_score),
        "--min-counted-score must be within [0, 1], got {}",
        a.min_counted_score
    );
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let settings = crate::config::ScreeningSettings {
        mask_threshold: crate::config::Probability(threshold),
        score_threshold: crate::config::Probability(0.0),
        min_counted_score: crate::config::Probability(a.min_counted_score),
        precision: a.precision,
        ..Default::default()
    };
    let screener = crate::screening::ModelScreener::from_models(model, None, settings, device);
    let mut out = Vec::new();
    let mut refused = 0;
    for input in &a.inputs {
        let result = crate::slice::read_slices(input, &Default::default())
            .map_err(|e| anyhow::anyhow!(e.reason()))
            .and_then(|slices| segment_input(&screener, input, &slices, threshold, a.out.as_deref()));
        match result {
            Ok(items) => out.extend(items),
            Err(e) => {
                // one bad file never stops the others: it is reported and the run goes on
                refused += 1;
                eprintln!("{}: refused: {e:#}", input.display());
                out.push(SegmentJson {
                    input: input.display().to_string(),
                    frame: None,
                    width: 0,
                    height: 0,
                    detections: Vec::new(),
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
    let text = serde_json::to_string_pretty(&out)?;
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{text}"),
        Some(p) => crate::fsutil::write_atomic(p, text.as_bytes())?,
        None => {
            for s in out.iter().filter(|s| s.error.is_none()) {
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
    super::inputs_outcome(refused, a.inputs.len())
}

/// Segment the slices of one input and write its per-slice files under `out`.
fn segment_input(
    screener: &crate::screening::ModelScreener,
    input: &Path,
    slices: &[crate::slice::Slice],
    threshold: f64,
    out: Option<&Path>,
) -> anyhow::Result<Vec<SegmentJson>> {
    let model = &screener.segmentation;
    let device = model.device();
    let many = slices.len() > 1;
    let mut items = Vec::with_capacity(slices.len());
    for (fi, s) in slices.iter().enumerate() {
        let img = crate::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, device)?;
        let dets = model.detect(std::slice::from_ref(&img))?;
        let d = &dets[0];
        let mut rows = detections_json(model, d, threshold)?;
        tracing::info!(input = %input.display(), detections = rows.len(), "segmented");
        // with --out, the finding that paints the mask and overlay flags what it leaves out
        // (score threshold 0: its lesions are the detections, in the same order)
        let finding = out.map(|_| screener.finding(s, d)).transpose()?;
        if let Some(f) = &finding {
            anyhow::ensure!(f.lesions.len() == rows.len(), "lesions and detections differ");
            for (row, l) in rows.iter_mut().zip(&f.lesions) {
                (row.outside_lung, row.low_score) = (l.outside_lung, l.low_score);
            }
        }
        let item = SegmentJson {
            input: input.display().to_string(),
            frame: s.meta.frame,
            width: d.image_size.1,
            height: d.image_size.0,
            detections: rows,
            error: None,
        };
        if let (Some(dir), Some(f)) = (out, finding) {
            let stem = input
                .file_stem()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = if many { format!("{stem}_f{fi}") } else { stem };
            write_png(
                &dir.join(format!("{stem}_mask.png")),
                &f.label_mask,
                s.width,
                s.height,
                false,
            )?;
            write_png(
                &dir.join(format!("{stem}_overlay.png")),
                &f.overlay_rgb,
                s.width,
                s.height,
                true,
            )?;
            let json = serde_json::to_string_pretty(&item)?;
            crate::fsutil::write_atomic(&dir.join(format!("{stem}.json")), json.as_bytes())?;
        }
        items.push(item);
    }
    Ok(items)
}

/// Write an 8-bit grey or RGB PNG atomically.
pub fn write_png(path: &Path, data: &[u8], w: u32, h: u32, rgb: bool) -> anyhow::Result<()> {
    use crate::png_encode::{ExtendedColorType, FilterType, encode_png};
    let color = if rgb {
        ExtendedColorType::Rgb8
    } else {
        ExtendedColorType::L8
    };
    let bytes = encode_png(data, w, h, color, FilterType::Adaptive)?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

//! `ctmask bench`: screen a synthetic series (or given files) and report throughput, latency,
//! time per stage and peak memory. Models come from files, or from a preset with the
//! deterministic weights the Python reference builds too (`docs/deterministic-weights.md`), so
//! `bench/side_by_side.sh` compares the same weights on the same slices.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::config::{Precision, ScreeningSettings};
use crate::device::DeviceChoice;
use crate::model::{MaskRcnn, ModelConfig, StageClock, deterministic_init};
use crate::screening::ModelScreener;
use crate::slice::{Slice, SliceFormat, SliceMeta};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Segmentation model file (else --preset with deterministic weights).
    #[arg(long, conflicts_with = "preset")]
    pub segmentation: Option<PathBuf>,
    /// Architecture preset for deterministic weights (r50-fpn4, r50-fpn5-frozenbn, r18-t1, ...).
    #[arg(long, default_value = "r50-fpn5-frozenbn")]
    pub preset: String,
    /// Classifier model file (else, with --classify, the preset turned classifier).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Also run the classifier (COVID-CT-Mask-Net), deterministic weights from the preset.
    #[arg(long)]
    pub classify: bool,
    /// N and S width of a preset classifier (full 256/1024, lightweight 128/512).
    #[arg(long, default_value_t = 256)]
    pub detections: i64,
    #[arg(long, default_value_t = 1024)]
    pub s_features: i64,
    /// Slice files to screen instead of the synthetic series (their reading is timed as stage "read").
    #[arg(long, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Synthetic slices to screen.
    #[arg(long, default_value_t = 8)]
    pub slices: usize,
    /// Synthetic slice size.
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Untimed batches first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// torch CPU threads (default: the cores available).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time one segmentation training step (forward, backward, Adam) instead of screening.
    #[arg(long)]
    pub train_step: bool,
    /// On the CPU, keep libtorch's NCHW weight layout (screening's `cpu_channels_last: false`).
    #[arg(long)]
    pub nchw: bool,
    /// On CUDA, run backbone, FPN and RPN head as captured CUDA graphs (screening's
    /// `cuda_graphs`); the report then also compares the first batch with an eager run.
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Also write the models used to this folder (segmentation.safetensors, classifier.safetensors),
    /// e.g. to compare CUDA and CPU outputs of `segment` / `classify` on the same weights.
    #[arg(long)]
    pub save_models: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub precision: String,
    pub batch_size: usize,
    pub slices: usize,
    pub slices_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    /// Where the time goes: a separate pass over the first two batches whose clock synchronises
    /// CUDA at each stage (so its sum exceeds the throughput pass's time per slice on a GPU).
    pub stage_ms_per_slice: std::collections::BTreeMap<String, f64>,
    /// Device-to-host reads per batch in the throughput pass (`ops::host`; each one a
    /// synchronisation on CUDA, none counted on the CPU).
    pub syncs_per_batch: Option<f64>,
    /// The segmentation model's CUDA graphs ("off", "on (N captured)" or why not).
    pub cuda_graphs: Option<String>,
    /// With graphs: the first batch screened with them and eagerly, compared.
    pub cuda_graphs_vs_eager: Option<GraphsVsEager>,
    pub peak_rss_mb: f64,
    pub peak_gpu_mb: Option<f64>,
    pub train_step_s: Option<f64>,
    pub threads: i32,
    /// "tuned" when `device::tune_allocator` is in force, else "glibc default".
    pub allocator: &'static str,
}

fn synthetic_slices(n: usize, size: u32) -> Vec<Slice> {
    use crate::data::synth::{LesionClass, phantom};
    (0..n)
        .map(|i| {
            let class = [LesionClass::Covid, LesionClass::Cp, LesionClass::Control][i % 3];
            let p = phantom(1000 + i as u64, class, size);
            let hu: Vec<f32> = p.hu.iter().map(|&v| (v as f32).clamp(-1024.0, 3071.0)).collect();
            let rgb = hu
                .iter()
                .flat_map(|&v| [crate::slice::lung_window(v, -600.0, 1500.0); 3])
                .collect();
            Slice {
                width: p.width,
                height: p.height,
                rgb,
                hu: Some(hu),
                format: SliceFormat::Png,
                meta: SliceMeta::default(),
            }
        })
        .collect()
}

/// Peak resident memory of this process (VmHWM), MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn model(path: Option<&PathBuf>, cfg: ModelConfig, device: Device) -> anyhow::Result<MaskRcnn> {
    Ok(match path {
        Some(p) => MaskRcnn::load(p, device)?,
        None => {
            let m = MaskRcnn::new(&cfg, device)?;
            deterministic_init::fill(&m);
            m
        }
    })
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(a.threads);
    let base =
        ModelConfig::preset(&a.preset).ok_or_else(|| anyhow::anyhow!("unknown preset {}", a.preset))?;
    let seg = model(a.segmentation.as_ref(), base.clone(), device)?;
    let cls = if a.classifier.is_some() || a.classify {
        Some(model(
            a.classifier.as_ref(),
            base.into_classifier(a.detections, a.s_features),
            device,
        )?)
    } else {
        None
    };
    if let Some(dir) = &a.save_models {
        std::fs::create_dir_all(dir)?;
        seg.save(&dir.join("segmentation.safetensors"), &Default::default())?;
        if let Some(c) = &cls {
            c.save(&dir.join("classifier.safetensors"), &Default::default())?;
        }
    }
    let mut stages = std::collections::BTreeMap::<String, f64>::new();
    let slices = if a.files.is_empty() {
        synthetic_slices(a.slices, a.size)
    } else {
        // the reader's own time (file read, decode, conversion), reported as a stage
        let t = Instant::now();
        let mut v = Vec::new();
        for f in &a.files {
            v.extend(crate::slice::read_slices(f, &Default::default())?);
        }
        stages.insert(
            "read".into(),
            t.elapsed().as_secs_f64() * 1e3 / v.len().max(1) as f64,
        );
        v
    };
    if a.train_step {
        return train_step(&seg, &slices[0], a.json);
    }
    let settings = ScreeningSettings {
        precision: a.precision,
        cpu_channels_last: !a.nchw,
        cuda_graphs: a.cuda_graphs,
        ..Default::default()
    };
    let mut screener = ModelScreener::from_models(seg, cls, settings, device);
    let mut latencies = Vec::new();
    let mut peak_gpu: Option<f64> = None;
    let batches: Vec<&[Slice]> = slices.chunks(a.batch_size.max(1)).collect();
    for b in batches.iter().cycle().take(a.warmup) {
        screener.screen_batch(b);
    }
    // throughput: no stage clock (it synchronises CUDA at every stage)
    let syncs_before = crate::ops::host::syncs();
    let started = Instant::now();
    for b in &batches {
        let t = Instant::now();
        let results = screener.screen_batch(b);
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
            peak_gpu =
                crate::device::cuda_used_memory().map(|u| peak_gpu.unwrap_or(0.0).max(u as f64 / 1048576.0));
        }
        for r in results {
            r?;
        }
        let per = t.elapsed().as_secs_f64() * 1e3 / b.len() as f64;
        latencies.extend(std::iter::repeat_n(per, b.len()));
    }
    let total = started.elapsed().as_secs_f64();
    let graphs_status = screener.segmentation.cuda_graphs_status();
    let graphs_vs_eager = if a.cuda_graphs && device.is_cuda() {
        Some(compare_with_eager(&mut screener, batches[0])?)
    } else {
        None
    };
    let syncs_per_batch = (crate::ops::host::syncs() - syncs_before) as f64 / batches.len().max(1) as f64;
    // where the time goes: the first two batches again, the clock synchronising at each stage
    let staged: Vec<&&[Slice]> = batches.iter().take(2).collect();
    let staged_slices: usize = staged.iter().map(|b| b.len()).sum();
    for b in staged {
        let mut clock = StageClock::on();
        for r in screener.screen_batch_timed(b, &mut clock) {
            r?;
        }
        for (k, v) in clock.ms {
            *stages.entry(k.to_string()).or_insert(0.0) += v / staged_slices.max(1) as f64;
        }
    }
    let r = BenchReport {
        device: crate::device::device_name(device),
        precision: format!("{:?}", a.precision).to_lowercase(),
        batch_size: a.batch_size,
        slices: slices.len(),
        slices_per_s: slices.len() as f64 / total,
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p95: percentile(&latencies, 0.95),
        stage_ms_per_slice: stages,
        syncs_per_batch: Some(syncs_per_batch),
        cuda_graphs: Some(graphs_status),
        cuda_graphs_vs_eager: graphs_vs_eager,
        peak_rss_mb: peak_rss_mb(),
        peak_gpu_mb: peak_gpu,
        train_step_s: None,
        threads: tch::get_num_threads(),
        allocator: allocator_name(),
    };
    print_report(&r, a.json)
}

/// The first batch screened with CUDA graphs and eagerly: what differs.
#[derive(Debug, Serialize)]
pub struct GraphsVsEager {
    pub slices: usize,
    pub same_lesion_counts: bool,
    pub same_labels: bool,
    pub max_score_diff: f64,
    pub max_box_diff_px: f64,
    pub max_probability_diff: f64,
}

fn compare_with_eager(screener: &mut ModelScreener, batch: &[Slice]) -> anyhow::Result<GraphsVsEager> {
    let graphed: Vec<_> = screener
        .screen_batch(batch)
        .into_iter()
        .collect::<Result<_, _>>()?;
    screener.segmentation.set_cuda_graphs(false);
    if let Some(c) = screener.classifier.as_mut() {
        c.set_cuda_graphs(false);
    }
    let eager: Vec<_> = screener
        .screen_batch(batch)
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut r = GraphsVsEager {
        slices: batch.len(),
        same_lesion_counts: true,
        same_labels: true,
        max_score_diff: 0.0,
        max_box_diff_px: 0.0,
        max_probability_diff: 0.0,
    };
    for (g, e) in graphed.iter().zip(&eager) {
        r.same_lesion_counts &= g.lesions.len() == e.lesions.len();
        for (x, y) in g.lesions.iter().zip(&e.lesions) {
            r.max_score_diff = r.max_score_diff.max((x.score - y.score).abs() as f64);
            for (p, q) in x.bbox.iter().zip(&y.bbox) {
                r.max_box_diff_px = r.max_box_diff_px.max((p - q).abs() as f64);
            }
        }
        if let (Some(x), Some(y)) = (&g.classification, &e.classification) {
            r.same_labels &= x.label == y.label;
            for (p, q) in x.probabilities.iter().zip(&y.probabilities) {
                r.max_probability_diff = r.max_probability_diff.max((p - q).abs() as f64);
            }
        }
    }
    Ok(r)
}

fn allocator_name() -> &'static str {
    if crate::device::allocator_tuned() {
        "tuned"
    } else {
        "glibc default"
    }
}

fn print_report(r: &BenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "device {} ({} threads, allocator {}), {} batch {}, {} slices",
        r.device, r.threads, r.allocator, r.precision, r.batch_size, r.slices
    );
    if let Some(t) = r.train_step_s {
        println!("training step {t:.3} s");
    } else {
        println!(
            "{:.2} slices/s, latency p50 {:.1} ms p95 {:.1} ms{}",
            r.slices_per_s,
            r.latency_ms_p50,
            r.latency_ms_p95,
            r.syncs_per_batch
                .map(|s| format!(", {s:.1} device-to-host syncs per batch"))
                .unwrap_or_default()
        );
        for (k, v) in &r.stage_ms_per_slice {
            println!("  {k:<15} {v:>9.1} ms/slice");
        }
    }
    println!(
        "peak host memory {:.0} MB{}",
        r.peak_rss_mb,
        r.peak_gpu_mb
            .map(|g| format!(", GPU memory in use {g:.0} MB"))
            .unwrap_or_default()
    );
    Ok(())
}

fn train_step(model: &MaskRcnn, s: &Slice, json: bool) -> anyhow::Result<()> {
    use crate::model::Target;
    let device = model.device();
    let img = crate::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, device)?;
    let (w, h) = (s.width as i64, s.height as i64);
    // three lesion-sized boxes (fractions of the slice) with filled masks
    let frac = [
        [0.2f32, 0.23, 0.31, 0.33],
        [0.59, 0.39, 0.7, 0.51],
        [0.43, 0.59, 0.51, 0.66],
    ];
    let boxes: Vec<[f32; 4]> = frac
        .iter()
        .map(|f| [f[0] * w as f32, f[1] * h as f32, f[2] * w as f32, f[3] * h as f32].map(f32::floor))
        .collect();
    let masks = Tensor::zeros([3, h, w], (Kind::Uint8, device));
    for (i, b) in boxes.iter().enumerate() {
        let _ = masks
            .get(i as i64)
            .narrow(0, b[1] as i64, (b[3] - b[1]).max(1.0) as i64)
            .narrow(1, b[0] as i64, (b[2] - b[0]).max(1.0) as i64)
            .fill_(1);
    }
    let target = Target {
        boxes: Tensor::from_slice(&boxes.concat()).view([3, 4]).to_device(device),
        labels: Tensor::from_slice(&[1i64, 2, 1]).to_device(device),
        masks,
    };
    let mut adam =
        crate::training::optim::Adam::new(crate::training::segmentation_parameters(model), 1e-5, 1e-3);
    let mut times = Vec::new();
    let mut rng = crate::ops::sampler::sampling_rng(0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let l = model
            .losses(
                std::slice::from_ref(&img),
                std::slice::from_ref(&target),
                &mut rng,
            )?
            .total();
        adam.zero_grad();
        l.backward();
        adam.step();
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let r = BenchReport {
        device: crate::device::device_name(device),
        precision: "fp32".into(),
        batch_size: 1,
        slices: 1,
        slices_per_s: f64::NAN,
        latency_ms_p50: f64::NAN,
        latency_ms_p95: f64::NAN,
        stage_ms_per_slice: Default::default(),
        syncs_per_batch: None,
        cuda_graphs: None,
        cuda_graphs_vs_eager: None,
        peak_rss_mb: peak_rss_mb(),
        peak_gpu_mb: None,
        train_step_s: Some(percentile(&times[1..], 0.5)),
        threads: tch::get_num_threads(),
        allocator: allocator_name(),
    };
    print_report(&r, json)
}

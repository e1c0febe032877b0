//! `ctmask synth`: write synthetic chest CT in the CNCB, COVIDx or DICOM layout.
//!
//! Slices are grouped into synthetic patients of [`SLICES_PER_PATIENT`] slices that share
//! their anatomy and class and step from the upper to the lower chest. Layouts:
//! - `cncb`: `imgs/<patient>_<slice>.jpg` (windowed 8-bit, three identical channels) and
//!   `masks/<patient>_<slice>.png` (raw values 0..3);
//! - `covidx`: `<cls>_<patient>_<scan>_<slice:04d>.png` (windowed 8-bit grey) and `split.txt`
//!   with `<file> <class> <xmin> <ymin> <xmax> <ymax>` (the body box);
//! - `dicom`: `series_<patient>/<slice:04d>.dcm`, one CT series per folder (see
//!   [`super::synth_dicom`]).
//!
//! `preview` adds `preview/<name>.png`: the windowed slice with GGO tinted yellow,
//! consolidation red and the lung border green. Every file is written under a temporary
//! name and renamed, so a watcher never sees half a file.

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder};

pub use super::lesions::LesionVariant;
pub use super::phantom::{LesionClass, Phantom, PhantomSpec, phantom, phantom_with};
use super::rng::Rng;
use super::synth_dicom::{SeriesInfo, dicom_bytes};
use super::zoom::zoomed;
use crate::slice::lung_window;

/// Slices per synthetic patient (CNCB has 5 lesion slices per patient).
pub const SLICES_PER_PATIENT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Cncb,
    Covidx,
    Dicom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassChoice {
    Control,
    Cp,
    Covid,
    /// Patients cycle Control, CP, COVID.
    Mixed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    pub out: PathBuf,
    pub layout: Layout,
    /// Number of slices.
    pub count: usize,
    pub seed: u64,
    pub class: ClassChoice,
    /// Width and height in pixels (512 like CNCB).
    pub size: u32,
    pub preview: bool,
    /// Fraction of slices written as zoomed views (a 90-300 mm field of view, see
    /// [`super::zoom`]); 0 (the default) writes every slice at the phantom's own field of view,
    /// exactly as before the option existed.
    pub zoom: f64,
}

/// What `run_synth` wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SynthSummary {
    pub slices: usize,
    pub patients: usize,
    /// Slices per class, indexed by [`LesionClass::index`].
    pub per_class: [usize; 3],
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth options: {0}")]
    Options(String),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot encode dicom {path}: {message}")]
    Dicom { path: PathBuf, message: String },
}

/// The phantom spec of slice `index` of a run (what a file holds, before any zoom).
pub fn slice_spec(opts: &SynthOptions, index: usize) -> PhantomSpec {
    plan(opts, index).2
}

/// Stream of the slice seed that decides and places a zoomed view.
const STREAM_ZOOM: u64 = 4;

/// The phantom of slice `index` of a run: what its files hold.
pub fn slice_phantom(opts: &SynthOptions, index: usize) -> Phantom {
    phantom_of(opts, &plan(opts, index).2)
}

/// The phantom of `spec`, zoomed when the run's `zoom` draw says so.
fn phantom_of(opts: &SynthOptions, spec: &PhantomSpec) -> Phantom {
    let ph = phantom_with(spec);
    if opts.zoom <= 0.0 {
        return ph;
    }
    let mut rng = Rng::stream(spec.seed, STREAM_ZOOM);
    if rng.chance(opts.zoom) {
        zoomed(&ph, spec.class, &mut rng)
    } else {
        ph
    }
}

/// Patient number, slice number within the patient and spec of slice `index`.
fn plan(opts: &SynthOptions, index: usize) -> (usize, usize, PhantomSpec) {
    let (patient, k) = (index / SLICES_PER_PATIENT, index % SLICES_PER_PATIENT);
    let class = match opts.class {
        ClassChoice::Control => LesionClass::Control,
        ClassChoice::Cp => LesionClass::Cp,
        ClassChoice::Covid => LesionClass::Covid,
        ClassChoice::Mixed => LesionClass::ALL[patient % 3],
    };
    let mix = |a: u64, b: u64| a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    let mut spec = PhantomSpec::new(mix(opts.seed, index as u64), class, opts.size);
    spec.anatomy_seed = mix(opts.seed, 1 << 40 | patient as u64);
    // apex to base: 0.22 .. 0.88, shifted per patient by up to +-0.02; the last level reaches
    // the lung bases (thin recesses around the liver and stomach domes, see `paint_recesses`)
    let shift = (spec.anatomy_seed % 1001) as f64 / 1000.0 - 0.5;
    spec.z = 0.22 + 0.165 * k as f64 + 0.04 * shift;
    (patient, k, spec)
}

/// Generate `opts.count` slices into `opts.out` in the chosen layout.
pub fn run_synth(opts: &SynthOptions) -> Result<SynthSummary, SynthError> {
    if opts.size < 32 || opts.size > 4096 {
        return Err(SynthError::Options(format!(
            "size {} not in 32..=4096",
            opts.size
        )));
    }
    if !(0.0..=1.0).contains(&opts.zoom) {
        return Err(SynthError::Options(format!(
            "zoom {} not a fraction in 0..=1",
            opts.zoom
        )));
    }
    let mut summary = SynthSummary::default();
    let mut split = String::new();
    for index in 0..opts.count {
        let (patient, k, spec) = plan(opts, index);
        let ph = phantom_of(opts, &spec);
        let grey: Vec<u8> = ph
            .hu
            .iter()
            .map(|&h| lung_window(f32::from(h), -600.0, 1500.0))
            .collect();
        let (w, h) = (ph.width, ph.height);
        let stem = match opts.layout {
            Layout::Cncb => {
                let stem = format!("{patient}_{k}");
                let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
                let img = opts.out.join("imgs").join(format!("{stem}.jpg"));
                write_image(&img, &rgb, w, h, ExtendedColorType::Rgb8, &mut summary)?;
                let mask = opts.out.join("masks").join(format!("{stem}.png"));
                write_image(&mask, &ph.mask, w, h, ExtendedColorType::L8, &mut summary)?;
                stem
            }
            Layout::Covidx => {
                let cls = spec.class.index();
                let stem = format!("{cls}_{patient}_{}_{:04}", patient + 1000, k);
                let name = format!("{stem}.png");
                write_image(
                    &opts.out.join(&name),
                    &grey,
                    w,
                    h,
                    ExtendedColorType::L8,
                    &mut summary,
                )?;
                let [x0, y0, x1, y1] = body_box(&ph);
                split.push_str(&format!("{name} {cls} {x0} {y0} {x1} {y1}\n"));
                stem
            }
            Layout::Dicom => {
                let series = SeriesInfo::new(opts.seed, patient, opts.size);
                let path = opts
                    .out
                    .join(format!("series_{patient:03}"))
                    .join(format!("{k:04}.dcm"));
                let bytes = dicom_bytes(&ph, &series, k).map_err(|message| SynthError::Dicom {
                    path: path.clone(),
                    message,
                })?;
                write_atomic(&path, &bytes)?;
                summary.files.push(path);
                format!("{patient:03}_{k:04}")
            }
        };
        if opts.preview {
            let path = opts.out.join("preview").join(format!("{stem}.png"));
            write_image(
                &path,
                &overlay(&ph, &grey),
                w,
                h,
                ExtendedColorType::Rgb8,
                &mut summary,
            )?;
        }
        summary.slices += 1;
        summary.patients = patient + 1;
        summary.per_class[spec.class.index() as usize] += 1;
    }
    if opts.layout == Layout::Covidx && opts.count > 0 {
        let path = opts.out.join("split.txt");
        write_atomic(&path, split.as_bytes())?;
        summary.files.push(path);
    }
    Ok(summary)
}

/// Crop box `[xmin, ymin, xmax, ymax]` (exclusive max) of the pixels above -500 HU:
/// body and table, like COVIDx's body boxes.
fn body_box(ph: &Phantom) -> [u32; 4] {
    let w = ph.width as usize;
    let mut b = [u32::MAX, u32::MAX, 0, 0];
    for (i, &h) in ph.hu.iter().enumerate() {
        if h > -500 {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
        }
    }
    if b[0] == u32::MAX {
        [0, 0, ph.width, ph.height]
    } else {
        b
    }
}

/// Windowed grey with lesion tints and the lung border, for people to look at.
fn overlay(ph: &Phantom, grey: &[u8]) -> Vec<u8> {
    let w = ph.width as usize;
    let m = &ph.mask;
    let tint = |g: u8, c: [u8; 3]| c.map(|v| ((u16::from(g) * 3 + u16::from(v) * 2) / 5) as u8);
    (0..grey.len())
        .flat_map(|i| {
            let g = grey[i];
            let border = m[i] >= 1
                && [i.wrapping_sub(1), i + 1, i.wrapping_sub(w), i + w]
                    .iter()
                    .any(|&j| m.get(j).is_none_or(|&v| v == 0));
            match m[i] {
                _ if border => [0, 220, 0],
                2 => tint(g, [255, 220, 0]),
                3 => tint(g, [255, 0, 0]),
                _ => [g, g, g],
            }
        })
        .collect()
}

fn write_image(
    path: &Path,
    pixels: &[u8],
    w: u32,
    h: u32,
    color: ExtendedColorType,
    summary: &mut SynthSummary,
) -> Result<(), SynthError> {
    let encoded = if path.extension().is_some_and(|e| e == "jpg") {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
            .write_image(pixels, w, h, color)
            .map(|()| bytes)
    } else {
        crate::png_encode::encode_png(pixels, w, h, color, crate::png_encode::FilterType::Adaptive)
    };
    let bytes = encoded.map_err(|source| SynthError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)?;
    summary.files.push(path.to_path_buf());
    Ok(())
}

/// Write through a temporary file in the same directory, fsync, rename ([`crate::fsutil`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    crate::fsutil::write_atomic_creating_dir(path, bytes).map_err(|e| SynthError::Io {
        path: e.path,
        source: e.source,
    })
}

//! `ctmask synth`: synthetic chest CT (spec synthetic-ct.md).

use std::path::PathBuf;

use crate::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    /// CNCB segmentation layout: imgs/*.jpg and masks/*.png (0 bg, 1 lung, 2 GGO, 3 consolidation).
    Cncb,
    /// COVIDx classification layout: <cls>_<patient>_<scan>_<slice>.png and a split file.
    Covidx,
    /// DICOM CT series, one folder per series, ready to drop into a watch folder.
    Dicom,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ClassArg {
    Control,
    Cp,
    Covid,
    /// Patients cycle through control, CP and COVID.
    Mixed,
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub layout: LayoutArg,
    /// Number of slices (five per patient).
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "mixed")]
    pub class: ClassArg,
    /// Width and height in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Also write overlay PNGs for a person to look at.
    #[arg(long)]
    pub preview: bool,
    /// Fraction of slices written as zoomed views (a window of 25-60 % of the slice around a
    /// point in the lungs, resampled to the full size: the small fields of view and crops of
    /// real archives); 0 writes none.
    #[arg(long, default_value_t = 0.0)]
    pub zoom: f64,
}

pub fn run(a: &SynthArgs) -> anyhow::Result<()> {
    let opts = SynthOptions {
        out: a.out.clone(),
        layout: match a.layout {
            LayoutArg::Cncb => Layout::Cncb,
            LayoutArg::Covidx => Layout::Covidx,
            LayoutArg::Dicom => Layout::Dicom,
        },
        count: a.count,
        seed: a.seed,
        class: match a.class {
            ClassArg::Control => ClassChoice::Control,
            ClassArg::Cp => ClassChoice::Cp,
            ClassArg::Covid => ClassChoice::Covid,
            ClassArg::Mixed => ClassChoice::Mixed,
        },
        size: a.size,
        preview: a.preview,
        zoom: a.zoom,
    };
    let s = run_synth(&opts)?;
    println!(
        "wrote {} slices of {} patients (control {}, pneumonia {}, covid {}) to {}",
        s.slices,
        s.patients,
        s.per_class[0],
        s.per_class[1],
        s.per_class[2],
        a.out.display()
    );
    Ok(())
}

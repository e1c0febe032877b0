//! `ctmask import-weights`: original `.pth` checkpoints -> ctmask model files.

use std::path::PathBuf;

use crate::checkpoint::import::{PRESETS, import};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The `.pth` file (torch.save: zip or legacy format).
    pub src: PathBuf,
    /// What the keys cannot tell: r50-fpn5-frozenbn, r50-fpn5, r50-fpn4, r18-t1, r34-t1, torchvision.
    #[arg(long)]
    pub preset: String,
    /// The ctmask model file to write (.safetensors; Python's safetensors package reads it too).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &ImportArgs) -> anyhow::Result<()> {
    if !PRESETS.iter().any(|p| p.0 == a.preset) {
        let list: Vec<String> = PRESETS.iter().map(|(n, d)| format!("  {n}: {d}")).collect();
        anyhow::bail!(
            "unknown preset {:?}; known presets:\n{}",
            a.preset,
            list.join("\n")
        );
    }
    let r = import(&a.src, &a.preset, &a.out)?;
    for i in &r.inferred {
        println!("inferred: {i}");
    }
    for i in &r.ignored {
        println!("ignored:  {i}");
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

//! What the segmentation and the classifier trainers share: starting or resuming a run in its
//! output folder, the CSV log and its PNG plot rewritten after every epoch, and checkpoints
//! (model file + optimizer state + epoch) every N epochs and at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::MaskRcnn;
use crate::training::optim::Adam;
use crate::{Error, Result};

/// One training run's bookkeeping in its output folder.
pub struct Run<'a> {
    out: &'a Path,
    model_name: &'a str,
    epochs: usize,
    save_every: usize,
    log_path: PathBuf,
    log: String,
    /// The first (0-based) epoch to train: 0, or the resumed checkpoint's epoch.
    pub start_epoch: usize,
    /// The last checkpoint written.
    pub last: PathBuf,
}

impl<'a> Run<'a> {
    /// Creates `out`; when resuming from `resume`, takes its epoch and loads the optimizer state
    /// saved beside it into `adam`, and continues its CSV log. A new log starts with `header`.
    pub fn start(
        out: &'a Path,
        model_name: &'a str,
        epochs: usize,
        save_every: usize,
        header: &str,
        adam: &mut Adam,
        resume: Option<&Path>,
    ) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let mut start_epoch = 0;
        if let Some(ckpt) = resume {
            let (_, meta) = crate::model::weights::read_config(ckpt)?;
            start_epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
            adam.load(&optimizer_path(ckpt))?;
            tracing::info!(epoch = start_epoch, "resumed from {}", ckpt.display());
        }
        let log_path = out.join("training_log.csv");
        let log = if start_epoch > 0 && log_path.exists() {
            std::fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?
        } else {
            header.into()
        };
        Ok(Run {
            out,
            model_name,
            epochs,
            save_every,
            log_path,
            log,
            start_epoch,
            last: PathBuf::new(),
        })
    }

    /// After (1-based) `epoch`: appends its CSV `row` (ending in a newline), rewrites the log and
    /// the plot, and saves a checkpoint when one is due.
    pub fn end_epoch(&mut self, epoch: usize, row: &str, model: &MaskRcnn, adam: &Adam) -> Result<()> {
        self.log.push_str(row);
        crate::fsutil::write_atomic(&self.log_path, self.log.as_bytes())?;
        plot_log(&self.log, &self.out.join("training_curves.png"))?;
        if epoch.is_multiple_of(self.save_every.max(1)) || epoch == self.epochs {
            self.last = save_checkpoint(model, adam, self.out, self.model_name, epoch)?;
        }
        Ok(())
    }
}

/// `<checkpoint>.optim.safetensors` beside a model checkpoint.
pub fn optimizer_path(ckpt: &Path) -> PathBuf {
    let mut s = ckpt.as_os_str().to_owned();
    s.push(".optim");
    PathBuf::from(s)
}

/// `<out>/<model_name>_ckpt_<epoch>.safetensors` plus the optimizer state beside it.
fn save_checkpoint(
    model: &MaskRcnn,
    adam: &Adam,
    out: &Path,
    model_name: &str,
    epoch: usize,
) -> Result<PathBuf> {
    let path = out.join(format!("{model_name}_ckpt_{epoch}.safetensors"));
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("model_name".to_string(), model_name.to_string());
    meta.insert("lrate".to_string(), adam.lr.to_string());
    model.save(&path, &meta)?;
    adam.save(&optimizer_path(&path))?;
    tracing::info!("saved {}", path.display());
    Ok(path)
}

/// Plot the CSV log's train and validation totals.
pub fn plot_log(csv: &str, png: &Path) -> Result<()> {
    let mut cols: Vec<(String, Vec<f64>)> = Vec::new();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    for h in header.iter().skip(1) {
        if *h != "seconds" {
            cols.push((h.to_string(), Vec::new()));
        }
    }
    for line in lines {
        for (i, v) in line.split(',').skip(1).enumerate() {
            if let Some(c) = cols.get_mut(i) {
                c.1.push(v.parse().unwrap_or(f64::NAN));
            }
        }
    }
    crate::training::plot::line_plot(png, &cols, 640, 360)
}

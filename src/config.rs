//! The typed `config/ctmask.yaml`: every setting with its default, loaded with serde. Unknown
//! keys, wrong types and invalid values are rejected with the file, the line and the key named.
//!
//! YAML is read with `serde_yaml_ng`, a maintained fork of the deprecated `serde_yaml` that reads
//! the same files; `serde_path_to_error` supplies the dotted key path. Range checks live in the
//! value types themselves ([`Probability`], [`Positive`]), so a bad value fails during
//! deserialisation, where the parser still knows its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::settings::DaemonSettings;
use crate::dicom::DicomSettings;
use crate::slice::SliceOptions;
use crate::{Error, Result};

/// A number within [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Probability(pub f64);

impl TryFrom<f64> for Probability {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Probability(v))
        } else {
            Err(format!("must be within [0, 1], got {v}"))
        }
    }
}

impl From<Probability> for f64 {
    fn from(p: Probability) -> f64 {
        p.0
    }
}

/// A whole number of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Positive(pub usize);

impl TryFrom<i64> for Positive {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v >= 1 {
            Ok(Positive(v as usize))
        } else {
            Err(format!("must be at least 1, got {v}"))
        }
    }
}

impl From<Positive> for i64 {
    fn from(p: Positive) -> i64 {
        p.0 as i64
    }
}

/// Numeric precision of inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 everywhere (parity with the original).
    #[default]
    Fp32,
    /// bfloat16 autocast on CUDA.
    Bf16,
    /// float16 autocast on CUDA.
    Fp16,
}

/// The model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPaths {
    /// The segmentation model (ctmask safetensors).
    pub segmentation: PathBuf,
    /// The classifier (ctmask safetensors with module S); optional.
    #[serde(default)]
    pub classifier: Option<PathBuf>,
}

/// How slices are screened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreeningSettings {
    /// Pixels count as lesion above this mask probability (sigmoid(0.5): the original's logit > 0.5).
    pub mask_threshold: Probability,
    /// Lesions below this detection score are not reported.
    pub score_threshold: Probability,
    /// fp32 (parity), bf16 or fp16 (CUDA only).
    pub precision: Precision,
    /// On the CPU, lay convolution weights out channels-last (faster oneDNN convolutions; the
    /// same results to float rounding). false keeps libtorch's default NCHW layout.
    pub cpu_channels_last: bool,
    /// The lung gate: a lesion with less than this fraction of its mask inside the lung field is
    /// flagged `outside_lung` and left out of the lesion counts, the involvement and the burden
    /// (it stays listed in the slice report). 0 turns the gate off. The classifier's input is
    /// never changed by it.
    pub min_lung_fraction: Probability,
    /// Lesions scoring below this are listed in the slice report with `low_score` and left out
    /// of the lesion counts, the involvement, the burden, the label mask and the overlay. 0.75,
    /// the score threshold of the original's evaluation (its mask AP), by default; 0 (or the
    /// `score_threshold`) counts every reported lesion, as the original's inference script draws
    /// them. The classifier's input is never changed by it.
    pub min_counted_score: Probability,
    /// On CUDA, run the fixed-shape part of each model (backbone, FPN, RPN head) as captured
    /// CUDA graphs, replayed batch after batch (fewer kernel launches from the host). Ignored on
    /// the CPU; where graphs cannot be used, everything runs eagerly (`ctmask doctor` says why).
    pub cuda_graphs: bool,
}

impl Default for ScreeningSettings {
    fn default() -> Self {
        ScreeningSettings {
            mask_threshold: Probability(crate::model::default_mask_threshold()),
            score_threshold: Probability(0.05),
            precision: Precision::Fp32,
            cpu_channels_last: true,
            min_lung_fraction: Probability(0.5),
            min_counted_score: Probability(0.75),
            cuda_graphs: false,
        }
    }
}

/// How slice files become model input (DICOM windowing and limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SliceSettings {
    /// Lung window level in HU (COVIDx-CT: -600).
    pub window_level: f32,
    /// Lung window width in HU (COVIDx-CT: 1500).
    pub window_width: f32,
    /// HU are clamped to [hu_min, hu_max] before windowing.
    pub hu_min: f32,
    pub hu_max: f32,
    /// Larger images are refused.
    pub max_width: Positive,
    pub max_height: Positive,
    /// Largest |z| direction cosine of rows and columns for an axial slice.
    pub axial_tolerance: Probability,
    /// Largest gantry tilt (degrees) of a tilted axial acquisition that is still screened.
    pub max_gantry_tilt: f32,
    /// Most bytes the decoding of one file may hold (all its frames; checked before decoding).
    pub max_decoded_bytes: Positive,
}

impl Default for SliceSettings {
    fn default() -> Self {
        let o = SliceOptions::default();
        SliceSettings {
            window_level: o.window_level,
            window_width: o.window_width,
            hu_min: o.hu_clamp.0,
            hu_max: o.hu_clamp.1,
            max_width: Positive(o.max_pixels.0 as usize),
            max_height: Positive(o.max_pixels.1 as usize),
            axial_tolerance: Probability(o.axial_tolerance as f64),
            max_gantry_tilt: o.max_gantry_tilt,
            max_decoded_bytes: Positive(o.max_decoded_bytes as usize),
        }
    }
}

impl SliceSettings {
    /// The reader's options.
    pub fn options(&self) -> SliceOptions {
        SliceOptions {
            window_level: self.window_level,
            window_width: self.window_width,
            hu_clamp: (self.hu_min, self.hu_max),
            max_pixels: (self.max_width.0 as u32, self.max_height.0 as u32),
            axial_tolerance: self.axial_tolerance.0 as f32,
            max_gantry_tilt: self.max_gantry_tilt,
            max_decoded_bytes: self.max_decoded_bytes.0 as u64,
        }
    }

    /// Values that parse but would make the reader fail open or panic, as (dotted key, reason):
    /// non-finite HU and window numbers (`f32::clamp` panics on NaN), an empty HU range, a
    /// window of no width, an axial tolerance of 1 (every orientation passes), a tilt outside
    /// [0, 45] degrees. The config loader and the daemon (at start and on every reload) check
    /// these.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, v) in [
            ("slice.window_level", self.window_level),
            ("slice.window_width", self.window_width),
            ("slice.hu_min", self.hu_min),
            ("slice.hu_max", self.hu_max),
        ] {
            if !v.is_finite() {
                out.push((key.to_string(), format!("must be a finite number, got {v}")));
            }
        }
        if self.hu_min.is_finite() && self.hu_max.is_finite() && self.hu_min >= self.hu_max {
            out.push((
                "slice.hu_min".into(),
                format!("must be below hu_max ({}), got {}", self.hu_max, self.hu_min),
            ));
        }
        if self.window_width.is_finite() && self.window_width <= 0.0 {
            out.push((
                "slice.window_width".into(),
                format!("must be positive, got {}", self.window_width),
            ));
        }
        if self.axial_tolerance.0 >= 1.0 {
            out.push((
                "slice.axial_tolerance".into(),
                format!(
                    "must be below 1 (1 lets nothing or everything through), got {}",
                    self.axial_tolerance.0
                ),
            ));
        }
        if !(0.0..=45.0).contains(&self.max_gantry_tilt) {
            out.push((
                "slice.max_gantry_tilt".into(),
                format!("must be within [0, 45] degrees, got {}", self.max_gantry_tilt),
            ));
        }
        out
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub models: ModelPaths,
    /// torch CPU threads; absent: the cores this process may use (cgroup limits respected).
    #[serde(default)]
    pub threads: Option<Positive>,
    #[serde(default)]
    pub screening: ScreeningSettings,
    #[serde(default)]
    pub slice: SliceSettings,
    #[serde(default)]
    pub daemon: DaemonSettings,
    #[serde(default)]
    pub dicom: DicomSettings,
}

impl Config {
    /// Parse YAML text; `origin` names the file in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .location()
                .map(|l| format!(" line {}", l.line()))
                .unwrap_or_default();
            let msg = inner.to_string();
            // serde_yaml_ng appends " at line L column C"; keep the message, name file, line and key
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            let last = key.rsplit('.').next().unwrap_or("");
            let msg = msg
                .strip_prefix(&format!("{last}: "))
                .map(str::to_string)
                .unwrap_or(msg);
            let key = if key == "." {
                String::new()
            } else {
                format!(" key '{key}':")
            };
            Error::Config(format!("{}:{line}:{key} {msg}", origin.display()))
        })
    }

    /// Load a config file; relative model paths are taken relative to the file's folder's parent
    /// when they do not exist relative to the working directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read config: {e}", path.display())))?;
        let mut c = Self::from_yaml(&text, path)?;
        if let Some((key, reason)) = c.problems().into_iter().next() {
            let line = line_of(&text, &key)
                .map(|l| format!(" line {l}:"))
                .unwrap_or_default();
            return Err(Error::Config(format!(
                "{}:{line} key '{key}': {reason}",
                path.display()
            )));
        }
        // relative paths are relative to the folder holding the config's folder (the repo root
        // for config/ctmask.yaml) when they do not exist from the working directory
        let base = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
        for p in std::iter::once(&mut c.models.segmentation).chain(c.models.classifier.as_mut()) {
            if p.is_relative() && !p.exists() && base.join(&*p).exists() {
                *p = base.join(&*p);
            }
        }
        c.daemon.dicom = c.dicom.clone();
        Ok(c)
    }

    /// Values that parse but would make the screener fail open or panic, as (dotted key,
    /// reason): every problem of the `slice:` block ([`SliceSettings::problems`]), thresholds of 1
    /// (nothing is ever found), and every problem of the daemon and DICOM blocks.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = self.slice.problems();
        for (key, v) in [
            ("screening.mask_threshold", self.screening.mask_threshold.0),
            ("screening.score_threshold", self.screening.score_threshold.0),
            ("screening.min_counted_score", self.screening.min_counted_score.0),
        ] {
            if v >= 1.0 {
                out.push((
                    key.to_string(),
                    format!("must be below 1 (1 lets nothing or everything through), got {v}"),
                ));
            }
        }
        if self.screening.mask_threshold.0 <= 0.0 {
            out.push((
                "screening.mask_threshold".into(),
                "must be above 0 (0 marks every pixel as lesion)".into(),
            ));
        }
        for e in self.daemon.problems() {
            use crate::daemon::settings::SettingsError;
            out.push(match e {
                SettingsError::Invalid { key, reason } => (format!("daemon.{key}"), reason),
                SettingsError::Slice { key, reason } => (key, reason),
            });
        }
        let d = &self.daemon;
        for p in self.dicom.problems(&d.watch, &d.output, &d.state) {
            let (key, reason) = p.split_once(": ").unwrap_or((p.as_str(), ""));
            out.push((key.to_string(), reason.to_string()));
        }
        out
    }

    /// The default config file: `config/ctmask.yaml`, then `/etc/ctmask/ctmask.yaml`.
    pub fn default_path() -> PathBuf {
        let local = PathBuf::from("config/ctmask.yaml");
        if local.exists() {
            local
        } else {
            PathBuf::from("/etc/ctmask/ctmask.yaml")
        }
    }
}

/// The 1-based line of a dotted key (`daemon.poll_interval_s`) in block-style YAML, for errors
/// found after parsing (the parser no longer knows lines then).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut path: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') || body.starts_with('-') {
            continue;
        }
        let Some((name, _)) = body.split_once(':') else {
            continue;
        };
        let indent = line.len() - body.len();
        while path.last().is_some_and(|(ind, _)| *ind >= indent) {
            path.pop();
        }
        path.push((indent, name.trim().trim_matches(['"', '\''])));
        if path.len() == parts.len() && path.iter().zip(&parts).all(|((_, a), b)| a == b) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::from_yaml(s, Path::new("test.yaml"))
    }

    #[test]
    fn defaults_fill_in() {
        let c = parse("models:\n  segmentation: a.safetensors\n").unwrap();
        assert_eq!(c.daemon.batch_size, 4);
        assert_eq!(c.slice.window_level, -600.0);
        assert!((c.screening.mask_threshold.0 - 0.6224593).abs() < 1e-6);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("models:\n  segmentation: a\n  segmentaton: b\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml: line 3:"), "{e}");
        assert!(e.contains("unknown field `segmentaton`"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_rejected_with_key() {
        let e = parse("models:\n  segmentation: a\nslice:\n  max_width: many\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("slice.max_width"), "{e}");
        let e = parse("models:\n  segmentation: a\nscreening:\n  mask_threshold: -0.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("screening.mask_threshold") && e.contains("must be within [0, 1]"),
            "{e}"
        );
        let e = parse("models:\n  segmentation: a\nslice:\n  max_height: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be at least 1"), "{e}");
        let e = parse("models:\n  segmentation: a\ndaemon:\n  device: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("daemon.device"), "{e}");
        let e = parse("models:\n  segmentation: a\nscreening:\n  precision: fp64\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("screening.precision"), "{e}");
    }

    #[test]
    fn the_shipped_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ctmask.yaml");
        let c = Config::load(&p).unwrap();
        assert_eq!(c.slice.options(), SliceOptions::default());
        // a negative threshold in the daemon block is refused with the key
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("min_free_percent: 2.0", "min_free_percent: -2.0");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, text).unwrap();
        let e = Config::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("min_free_percent"), "{e}");
    }

    #[test]
    fn dicom_settings_are_checked_with_file_line_and_key() {
        let e = parse("models:\n  segmentation: a\ndicom:\n  receiver:\n    port: 70000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 5") && e.contains("dicom.receiver.port") && e.contains("[1, 65535]"),
            "{e}"
        );
        let e = parse("models:\n  segmentation: a\ndicom:\n  forward:\n    objects: [seg, pdf]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("dicom.forward.objects"), "{e}");
        // across keys: forwarding an object that is not written
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "models:\n  segmentation: a\ndicom:\n  outputs: [seg]\n  forward:\n    destinations: [{ae_title: PACS, host: pacs, port: 104}]\n",
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.yaml: key 'dicom.forward.objects': sr is forwarded"),
            "{e}"
        );
        std::fs::write(&p, "models:\n  segmentation: a\ndicom:\n  outputs: [seg, sr]\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.daemon.dicom.outputs, c.dicom.outputs, "copied for the daemon");
    }

    #[test]
    fn values_that_fail_open_are_refused_with_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        let base = "models:\n  segmentation: a\n";
        for (extra, key, line) in [
            ("slice:\n  hu_min: .nan\n", "slice.hu_min", 4),
            (
                "slice:\n  window_width: 300\n  window_level: .inf\n",
                "slice.window_level",
                5,
            ),
            ("slice:\n  hu_min: 100\n  hu_max: 100\n", "slice.hu_min", 4),
            (
                "screening:\n  mask_threshold: 1.0\n",
                "screening.mask_threshold",
                4,
            ),
            (
                "screening:\n  score_threshold: 1\n",
                "screening.score_threshold",
                4,
            ),
            (
                "screening:\n  min_counted_score: 1\n",
                "screening.min_counted_score",
                4,
            ),
            ("slice:\n  axial_tolerance: 1.0\n", "slice.axial_tolerance", 4),
            ("daemon:\n  socket_mode: \"0666\"\n", "daemon.socket_mode", 4),
            ("daemon:\n  socket_mode: \"0777\"\n", "daemon.socket_mode", 4),
            (
                "daemon:\n  batch_size: 2\n  poll_interval_s: 1e-9\n",
                "daemon.poll_interval_s",
                5,
            ),
            ("daemon:\n  quiet_period_s: 1e300\n", "daemon.quiet_period_s", 4),
            ("daemon:\n  backoff_s: .nan\n", "daemon.backoff_s", 4),
            (
                "daemon:\n  series:\n    rule: covid_fraction\n    min_covid_percent: .nan\n",
                "daemon.series.min_covid_percent",
                6,
            ),
        ] {
            std::fs::write(&p, format!("{base}{extra}")).unwrap();
            let e = Config::load(&p).unwrap_err().to_string();
            let want = format!("{}: line {line}: key '{key}':", p.display());
            assert!(e.starts_with(&want), "{extra:?}: {e}");
        }
        std::fs::write(&p, format!("{base}daemon:\n  socket_mode: \"0660\"\n")).unwrap();
        Config::load(&p).expect("group-only mode is fine");
        assert_eq!(line_of("a:\n  b: 1\nc:\n  b: 2\n", "c.b"), Some(4));
        assert_eq!(line_of("a:\n  b: 1\n", "a.x"), None);
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/ctmask.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/ctmask.yaml: cannot read config"),
            "{e}"
        );
    }
}

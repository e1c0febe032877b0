//! Read one slice file (PNG, JPEG or DICOM) into the 8-bit RGB image the model sees, plus HU
//! and report metadata for DICOM.
//!
//! The format is detected from the content (PNG and JPEG magic bytes, the DICOM `DICM` marker
//! with or without the 128-byte preamble, or a bare DICOM data set), never from the extension.
//! PNG and JPEG follow what the original feeds its model, PIL's `convert('RGB')` (see
//! [`raster`]); DICOM goes through the dicom-rs crates, is screened (axial CT only) and turned
//! into HU, clamped and lung-windowed (see [`dicom`]). Every command and the daemon read slices
//! through [`read_slices`], so a refused file always carries the same short reason.

mod capture;
mod dicom;
mod frame;
#[cfg(test)]
mod jpeg_tests;
mod lengths;
#[cfg(test)]
mod pil_tests;
mod raster;
#[cfg(test)]
mod refusal_tests;
pub mod resample;
mod rle;
#[cfg(test)]
mod tests;
mod turbo;
mod vr_un;

use std::path::Path;

/// Transfer syntaxes the reader decodes (implicit/explicit little, explicit big, deflate, RLE,
/// JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000); every one has a fixture.
pub const DECODED_TRANSFER_SYNTAXES: [&str; 13] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
];

/// How DICOM pixels become the 8-bit model input, and what the reader refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceOptions {
    /// Lung window level in HU (COVIDx-CT: -600).
    pub window_level: f32,
    /// Lung window width in HU (COVIDx-CT: 1500).
    pub window_width: f32,
    /// HU are clamped to this range before windowing (lossy codecs overshoot).
    pub hu_clamp: (f32, f32),
    /// Largest accepted (width, height); anything wider or taller is refused.
    pub max_pixels: (u32, u32),
    /// Largest accepted |z| direction cosine of the image rows and of the columns
    /// (0 for a perfectly axial slice; 0.1 is about 5.7 degrees of tilt).
    pub axial_tolerance: f32,
    /// Largest gantry tilt in degrees of an axial acquisition that is still screened (its
    /// slices are tilted about the patient's left-right axis; see `frame.rs`).
    pub max_gantry_tilt: f32,
    /// Most bytes the decoding of one file may hold: per accepted frame its decoded samples
    /// plus the model input and HU kept for it. Checked from the header before decoding.
    pub max_decoded_bytes: u64,
}

impl Default for SliceOptions {
    fn default() -> Self {
        Self {
            window_level: -600.0,
            window_width: 1500.0,
            hu_clamp: (-1024.0, 3071.0),
            max_pixels: (4096, 4096),
            axial_tolerance: 0.1,
            max_gantry_tilt: 30.0,
            max_decoded_bytes: 1 << 30,
        }
    }
}

/// The container a slice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceFormat {
    Png,
    Jpeg,
    Dicom { transfer_syntax: String },
}

/// Report metadata of a DICOM slice (all `None` for PNG/JPEG). Never patient name or id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceMeta {
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub instance_number: Option<i32>,
    pub slice_location: Option<f64>,
    pub image_position: Option<[f64; 3]>,
    /// (row spacing, column spacing) in mm, as DICOM PixelSpacing.
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    /// Frame index inside a multi-frame object; `None` for single-frame files.
    pub frame: Option<u32>,
    /// Gantry tilt in degrees of a tilted axial acquisition (from the orientation); `None`
    /// for untilted slices.
    pub gantry_tilt_deg: Option<f64>,
}

/// One decoded slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub width: u32,
    pub height: u32,
    /// Row-major H*W*3 bytes: the model input before `/255` and normalisation.
    pub rgb: Vec<u8>,
    /// Row-major H*W HU after the clamp (DICOM only).
    pub hu: Option<Vec<f32>>,
    pub format: SliceFormat,
    pub meta: SliceMeta,
}

/// Why a file is not screened; its `Display` is the short reason used in reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("empty file")]
    Empty,
    #[error("unknown format: not PNG, JPEG or DICOM")]
    UnknownFormat,
    #[error("not CT: modality {0}")]
    NotCt(String),
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("localizer image")]
    Localizer,
    #[error("not axial: {0}")]
    NotAxial(String),
    #[error("no pixel data")]
    NoPixelData,
    #[error("unsupported encoding: {0}")]
    UnsupportedEncoding(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error(
        "too large: {frames} frame(s) of {width}x{height} decode to {} MiB, over the limit of {} MiB",
        bytes / (1 << 20),
        limit / (1 << 20)
    )]
    OverBudget {
        frames: u64,
        width: u32,
        height: u32,
        bytes: u64,
        limit: u64,
    },
    #[error("too large: {width}x{height} exceeds limit {max_width}x{max_height}")]
    TooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
}

/// A slice that could not be read or was refused, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("{path}: cannot read file")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {rejection}")]
    Rejected { path: String, rejection: Rejection },
}

impl SliceError {
    fn rejected(path: &str, rejection: Rejection) -> Self {
        Self::Rejected {
            path: path.to_string(),
            rejection,
        }
    }

    /// The short reason without the path, for reports and quarantine (`not CT: modality MR`).
    pub fn reason(&self) -> String {
        match self {
            Self::Io { source, .. } => format!("cannot read file: {source}"),
            Self::Rejected { rejection, .. } => rejection.to_string(),
        }
    }

    /// The refusal, when the file was read but not accepted.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Io { .. } => None,
            Self::Rejected { rejection, .. } => Some(rejection),
        }
    }
}

/// What the first bytes say a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Png,
    Jpeg,
    /// `DICM` at byte 128 (standard preamble).
    DicomPreamble,
    /// `DICM` at byte 0 (file meta without preamble).
    DicomNoPreamble,
    /// A bare data set starting with a group 0008 element, no file meta.
    DicomBare {
        explicit: bool,
    },
}

fn detect(bytes: &[u8]) -> Option<Detected> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(Detected::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(Detected::Jpeg);
    }
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return Some(Detected::DicomPreamble);
    }
    if bytes.starts_with(b"DICM") {
        return Some(Detected::DicomNoPreamble);
    }
    // bare data set: first tag (0008,xxxx) little endian
    if bytes.len() >= 8 && bytes[0] == 0x08 && bytes[1] == 0x00 {
        let vr = &bytes[4..6];
        let explicit = vr.iter().all(u8::is_ascii_uppercase);
        return Some(Detected::DicomBare { explicit });
    }
    None
}

/// Read every screened slice of one file (several for a multi-frame DICOM).
pub fn read_slices(path: &Path, opts: &SliceOptions) -> Result<Vec<Slice>, SliceError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SliceError::Io {
        path: name.clone(),
        source,
    })?;
    read_slices_from_bytes(&bytes, &name, opts)
}

/// Like [`read_slices`] for bytes already in memory; `name_for_errors` names them in errors.
pub fn read_slices_from_bytes(
    bytes: &[u8],
    name_for_errors: &str,
    opts: &SliceOptions,
) -> Result<Vec<Slice>, SliceError> {
    open_frames_from_bytes(bytes, name_for_errors, opts)?.collect()
}

/// The screened slices of one file, decoded one at a time as they are asked for: a PNG or JPEG
/// is its one slice; the frames of a DICOM object are decoded when iterated, so a caller that
/// screens a batch and drops it holds one batch of a multi-frame object at a time.
pub struct Frames {
    name: String,
    source: FrameSource,
}

enum FrameSource {
    One(Option<Box<Slice>>),
    Dicom(Box<dicom::DicomFrames>),
}

impl Frames {
    /// Slices not yet returned.
    pub fn remaining(&self) -> usize {
        match &self.source {
            FrameSource::One(s) => usize::from(s.is_some()),
            FrameSource::Dicom(d) => d.remaining(),
        }
    }
}

impl Iterator for Frames {
    type Item = Result<Slice, SliceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            FrameSource::One(s) => s.take().map(|s| Ok(*s)),
            FrameSource::Dicom(d) => d
                .next()
                .map(|r| r.map_err(|r| SliceError::rejected(&self.name, r))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}

/// Open one file's bytes: everything its header tells is checked now (format, modality, plane,
/// size, decoding budget); the pixels of each DICOM frame are decoded when iterated.
pub fn open_frames_from_bytes(
    bytes: &[u8],
    name_for_errors: &str,
    opts: &SliceOptions,
) -> Result<Frames, SliceError> {
    let reject = |r| SliceError::rejected(name_for_errors, r);
    if bytes.is_empty() {
        return Err(reject(Rejection::Empty));
    }
    let source = match detect(bytes).ok_or(Rejection::UnknownFormat) {
        Ok(Detected::Png) => raster::read_png(bytes, opts).map(|s| FrameSource::One(Some(Box::new(s)))),
        Ok(Detected::Jpeg) => raster::read_jpeg(bytes, opts).map(|s| FrameSource::One(Some(Box::new(s)))),
        Ok(kind) => dicom::open_frames(bytes, kind, opts).map(|d| FrameSource::Dicom(Box::new(d))),
        Err(r) => Err(r),
    };
    Ok(Frames {
        name: name_for_errors.to_string(),
        source: source.map_err(reject)?,
    })
}

/// Lung window: `floor(255 * clamp((hu - (level - width/2)) / width, 0, 1))`.
pub fn lung_window(hu: f32, level: f32, width: f32) -> u8 {
    // f64 like the numpy reference; NaN clamps to NaN and casts to 0
    let low = f64::from(level) - f64::from(width) / 2.0;
    let t = ((f64::from(hu) - low) / f64::from(width)).clamp(0.0, 1.0);
    (255.0 * t).floor() as u8
}

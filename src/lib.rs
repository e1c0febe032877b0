//! ctmask: unattended COVID-19 screening of chest CT, a Rust port of COVID-CT-Mask-Net
//! (Ter-Sarkisov, 2020-22). **Research use only: not a medical device.**
//!
//! Data flows one way: file on disk -> slice -> model -> finding -> report on disk.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the typed `config/ctmask.yaml` (unknown keys rejected, errors name file, line and key) |
//! | [`device`] | CUDA loading at run time, device choice, CPU threads |
//! | [`model`] | Mask R-CNN and module S on tch, mirroring torchvision's detection files (`generalized_rcnn`: the orchestration) |
//! | [`stage_clock`] | wall time per forward stage for `bench` and reports, outside the model |
//! | [`slice`] | one slice file (PNG, JPEG, DICOM) -> windowed 8-bit RGB, HU and metadata, or a reason |
//! | [`data`] | CNCB and COVIDx data sets, synthetic chest CT phantoms |
//! | [`dicom`] | DICOM out (SEG, TID 1500 SR, secondary capture) and in (C-STORE receiver), forwarding |
//! | [`daemon`] | the screening daemon: watcher, durable queue, worker, outputs, series, socket server (connection, one handler per request), one shutdown signal, systemd, disk |
//! | [`protocol`] | the daemon <-> dashboard messages (line-delimited JSON), the shared vocabulary (label, verdict, job state, error code) and the one client (`ctmask status`, the dashboard) |
//! | [`findings`] | plain-data findings shared by screening, reports and the protocol |
//! | [`ops`] | box maths, matcher, sampler, NMS, RoIAlign written on tensor ops |
//! | [`screening`] | one slice through segmentation and classification to a finding (daemon and CLI) |
//! | [`lung`] | the original's overlay rendering |
//! | [`lung_field`] | the lung field (lungs with their dense lesions) and the gate on lesions outside it |
//! | [`tui`] | the ratatui dashboard; talks only to the daemon's socket |
//! | `test_support` | helpers shared by unit tests of several modules (tests only) |
//! | [`fsutil`] | files that appear whole (temporary name, fsync, rename), alone or in batches |
//! | [`digest`] | SHA-256 content hashes as hex (job keys, file names, model identities) |
//! | [`png_encode`] | PNG encoding of 8-bit grey or RGB pixels (masks, overlays, phantoms) |
//! | [`clock`] | the wall clock in milliseconds since the Unix epoch |
//! | [`checkpoint`] | a safe reader of PyTorch `torch.save` files (zip and legacy) |
//! | [`training`] | training loops, Adam with resumable state, curves, metrics (mask AP, confusion matrix) |
//! | [`error`] | the library's error enum and `Result` |
//! | [`cli`] | the command implementations behind `main.rs` |

pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cuda_graph;
pub mod daemon;
pub mod data;
pub mod device;
pub mod dicom;
pub mod digest;
pub mod error;
pub mod findings;
pub mod fsutil;
pub mod lung;
pub mod lung_field;
pub mod model;
pub mod ops;
pub mod png_encode;
pub mod protocol;
pub mod screening;
pub mod slice;
pub mod stage_clock;
#[cfg(test)]
mod test_support;
pub mod training;
pub mod tui;

pub use error::{Error, Result};

/// The disclaimer every report carries.
pub const DISCLAIMER: &str = "research use only: not a medical device";

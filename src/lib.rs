//! ctmask: unattended COVID-19 screening of chest CT, a Rust port of COVID-CT-Mask-Net
//! (Ter-Sarkisov, 2020-22). **Research use only: not a medical device.**
//!
//! Data flows one way: file on disk -> slice -> model -> finding -> report on disk.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the typed `config/ctmask.yaml` (unknown keys rejected, errors name file, line and key) |
//! | [`device`] | CUDA loading at run time, device choice, CPU threads |
//! | [`model`] | Mask R-CNN and module S on tch, mirroring torchvision's detection files |
//! | [`ops`] | box maths, matcher, sampler, NMS, RoIAlign written on tensor ops |
//! | [`fsutil`] | files that appear whole (temporary name, fsync, rename) |
//! | [`cli`] | the command implementations behind `main.rs` |

pub mod cli;
pub mod config;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod model;
pub mod ops;

pub use error::{Error, Result};

/// The disclaimer every report carries.
pub const DISCLAIMER: &str = "research use only: not a medical device";

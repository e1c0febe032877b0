//! Data sets and synthetic data: the CNCB segmentation set, the COVIDx-CT classification set
//! and the synthetic chest CT generator (`ctmask synth`) with its phantoms.

mod anatomy;
mod canvas;
pub mod cncb;
pub mod covidx;
mod lesions;
mod mediastinum;
mod phantom;
mod rng;
pub mod synth;
mod synth_dicom;
#[cfg(test)]
mod synth_tests;
mod zoom;

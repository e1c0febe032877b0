//! ctmask's one integration-test binary (every extra test binary would link libtorch again).

mod common;
mod daemon_e2e;
mod demo_weights;
mod hostile;
mod import;
mod keys;
mod model_smoke;
mod parity;
mod synth_dicom;
mod training;
mod tui_e2e;

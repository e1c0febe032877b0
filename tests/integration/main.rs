//! ctmask's one integration-test binary (every extra test binary would link libtorch again).

mod checkpoint_keys;
mod cli_inputs;
mod common;
mod daemon_e2e;
mod demo_weights;
mod dicom_net;
mod dicom_out;
mod hostile;
mod hostile_files;
mod import;
mod model_smoke;
mod parity;
mod parity_jpeg;
mod synth_dicom;
mod training;
mod tui_e2e;

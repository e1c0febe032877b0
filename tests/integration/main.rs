//! ctmask's one integration-test binary (every extra test binary would link libtorch again).

mod common;
mod keys;
mod model_smoke;
mod parity;
mod daemon_e2e;

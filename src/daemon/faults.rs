//! Fault injection for the crash-loop and liveness tests: hidden settings, read from the
//! environment only (never from the config file, and the systemd unit sets neither), documented
//! in the README's "Testing hooks". With `CTMASK_TEST_ABORT_MARKER=<text>`, an input whose bytes
//! contain `<text>` aborts the whole process while it is being read (a decoder that takes the
//! process down); with `CTMASK_TEST_PANIC_MARKER=<text>`, such an input makes the reader thread
//! panic outside every guard (a thread that dies). Unset, both cost one environment lookup.

/// Whether `bytes` hold the marker named by the environment variable `var`.
fn marked(var: &str, bytes: &[u8]) -> bool {
    match std::env::var_os(var) {
        Some(m) if !m.is_empty() => {
            let m = m.as_encoded_bytes();
            bytes.windows(m.len()).any(|w| w == m)
        }
        _ => false,
    }
}

/// Called by the reader with an input's bytes before they are decoded.
pub(crate) fn on_read(bytes: &[u8]) {
    if marked("CTMASK_TEST_ABORT_MARKER", bytes) {
        std::process::abort();
    }
    if marked("CTMASK_TEST_PANIC_MARKER", bytes) {
        panic!("test hook: the reader thread dies (CTMASK_TEST_PANIC_MARKER)");
    }
}

//! Fuzz the slice reader (PNG, JPEG, DICOM): any bytes must give slices or a clean
//! rejection, never a panic, an abort or an unbounded allocation. Like checkpoint_reader, it
//! includes src/slice.rs (and src/slice/) by path, so it builds without libtorch.
//! Seed corpus: tests/fixtures/slice/*.dcm, ../shared/data/dicom/*.dcm and a few PNG/JPEG.
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run slice_reader corpus/slice_reader -- \
//!       -max_total_time=600 -rss_limit_mb=2048
#![no_main]

#[path = "../../src"]
mod ctmask_src {
    pub mod slice;
}

use ctmask_src::slice::{SliceOptions, read_slices_from_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts even inside catch_unwind; the slice reader catches the
    // panics of dicom-rs's decoders on purpose (a refusal, not a crash), so keep the default
    // hook. A panic that escapes the reader still aborts: libfuzzer-sys catches it and aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    // small limits keep decoders from allocating gigabytes for a forged header
    let opts = SliceOptions {
        max_pixels: (1024, 1024),
        ..SliceOptions::default()
    };
    if let Ok(slices) = read_slices_from_bytes(data, "fuzz", &opts) {
        for s in slices {
            let pixels = s.width as usize * s.height as usize;
            assert_eq!(s.rgb.len(), pixels * 3);
            if let Some(hu) = &s.hu {
                assert_eq!(hu.len(), pixels);
            }
        }
    }
});

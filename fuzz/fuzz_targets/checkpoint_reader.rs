//! Fuzz target: any bytes given to `load_torch_bytes` must give a value or an error, never a
//! panic, an overflow, a hang or an allocation far beyond the input's size. Seed the corpus
//! with `tests/fixtures/checkpoint/**/*.pth`.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../src/checkpoint/mod.rs"]
mod checkpoint;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(value) = checkpoint::load_torch_bytes(data) {
        if let Ok(tensors) = checkpoint::state_dict(&value) {
            for (_, t) in &tensors {
                let _ = t.to_f32_vec();
            }
        }
        let _ = checkpoint::anchor_generator(&value);
    }
});

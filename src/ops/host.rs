//! Reads from the device to the host, counted. On CUDA every such read waits for the GPU to
//! finish the work queued before it (a synchronisation), so the GPU path keeps them few: the
//! counter here is what `ctmask bench` reports as syncs per batch. Reads of CPU tensors are not
//! counted (they cost no synchronisation). libtorch operators that synchronise inside (`nonzero`,
//! `unique`, a boolean mask's `masked_select`) are counted through [`nonzero`] and [`note`].

use std::sync::atomic::{AtomicU64, Ordering};

use tch::{Device, Tensor};

static SYNCS: AtomicU64 = AtomicU64::new(0);

/// Device-to-host synchronisations counted so far in this process.
pub fn syncs() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

/// Count one synchronisation when `t` lives on a CUDA device (for an operator that waits inside).
pub fn note(t: &Tensor) {
    if t.device().is_cuda() {
        SYNCS.fetch_add(1, Ordering::Relaxed);
    }
}

/// `t` copied to the host and converted (`Vec<f32>`, `Vec<Vec<i64>>`, ...), counted.
pub fn read<T>(t: &Tensor) -> Result<T, tch::TchError>
where
    T: TryFrom<Tensor, Error = tch::TchError>,
{
    note(t);
    T::try_from(t.to_device(Device::Cpu))
}

/// `t.nonzero()`, counted: on CUDA it waits for the count of its result.
pub fn nonzero(t: &Tensor) -> Tensor {
    note(t);
    t.nonzero()
}

/// The host tensor `t` on `device`. On CUDA the copy goes from pinned host memory without
/// blocking (libtorch's pinned-memory cache keeps the buffer until the copy is done), so the host
/// need not wait for the GPU to drain its queue. Pinned through `_pin_memory` (what
/// `pin_memory` calls): `pin_memory` with a device argument, the only form tch binds, prints a
/// deprecation warning on every call in libtorch 2.11.
pub fn upload(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        let kind = t.kind();
        t.internal_pin_memory(device)
            .to_device_(device, kind, true, false)
    } else {
        t
    }
}

/// `v` as a 1-D int64 tensor on `device` ([`upload`]).
pub fn upload_i64(v: &[i64], device: Device) -> Tensor {
    upload(Tensor::from_slice(v), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reads_are_not_counted_and_convert() {
        let before = syncs();
        let v: Vec<i64> = read(&Tensor::from_slice(&[3i64, 1, 2])).unwrap();
        assert_eq!(v, vec![3, 1, 2]);
        let nz = nonzero(&Tensor::from_slice(&[0i64, 5, 0, 7]));
        assert_eq!(Vec::<i64>::try_from(nz.flatten(0, -1)).unwrap(), vec![1, 3]);
        assert_eq!(syncs(), before);
    }
}

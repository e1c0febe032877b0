//! Wall time per stage of a forward pass, for `bench` and the reports' timings. It lives outside
//! the model: the model only calls `lap` at its stage boundaries, and a clock that is off costs
//! nothing (no CUDA synchronisation in the hot path).

use std::collections::BTreeMap;

use tch::Device;

/// Wall time per stage, optionally synchronising CUDA at each lap so GPU work is attributed to
/// its stage (off in production: no synchronisation in the hot path).
#[derive(Debug, Default)]
pub struct StageClock {
    enabled: bool,
    last: Option<std::time::Instant>,
    /// Accumulated milliseconds per stage name.
    pub ms: BTreeMap<&'static str, f64>,
}

impl StageClock {
    /// A clock that records nothing.
    pub fn off() -> Self {
        StageClock::default()
    }

    /// A recording clock, started now.
    pub fn on() -> Self {
        StageClock {
            enabled: true,
            last: Some(std::time::Instant::now()),
            ms: BTreeMap::new(),
        }
    }

    /// Restart the lap timer (e.g. after work that belongs to no stage).
    pub fn reset(&mut self) {
        if self.enabled {
            self.last = Some(std::time::Instant::now());
        }
    }

    /// Close the current lap as `stage`.
    pub fn lap(&mut self, stage: &'static str, device: Device) {
        if !self.enabled {
            return;
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = std::time::Instant::now();
        if let Some(t) = self.last {
            *self.ms.entry(stage).or_insert(0.0) += (now - t).as_secs_f64() * 1e3;
        }
        self.last = Some(now);
    }
}

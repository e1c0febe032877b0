//! Host load for the GPU view: utilisation, memory, temperature and power per GPU through NVML,
//! which `nvml-wrapper` loads at run time (`libnvidia-ml.so.1`), so the dashboard also starts on
//! machines without NVIDIA drivers. There (or when NVML finds no device) it reads CPU and memory
//! load from /proc instead and says why no GPU is shown. Sampling is the only I/O in this file; the
//! history of samples lives in the app state, so freezing and rendering never touch the hardware.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

/// One GPU at one moment; a field the driver does not report is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub name: String,
    pub util_percent: Option<u32>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
}

impl GpuReading {
    pub fn mem_percent(&self) -> Option<f64> {
        match (self.mem_used_bytes, self.mem_total_bytes) {
            (Some(u), Some(t)) if t > 0 => Some(100.0 * u as f64 / t as f64),
            _ => None,
        }
    }
}

/// One sample of the machine the dashboard runs on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    pub gpus: Vec<GpuReading>,
    /// Why no GPU is shown (`None` when `gpus` is not empty).
    pub no_gpu: Option<String>,
    /// Busy share of all CPUs since the previous sample, in percent.
    pub cpu_percent: Option<f64>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
}

impl HostSample {
    pub fn mem_percent(&self) -> Option<f64> {
        match (self.mem_used_bytes, self.mem_total_bytes) {
            (Some(u), Some(t)) if t > 0 => Some(100.0 * u as f64 / t as f64),
            _ => None,
        }
    }
}

/// Reads GPUs through NVML when it loads, and CPU and memory from /proc.
pub struct HostSampler {
    nvml: Result<Nvml, String>,
    cpu_prev: Option<CpuTimes>,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSampler {
    /// Tries to load NVML once; a failure is remembered as the reason shown in the GPU view.
    pub fn new() -> HostSampler {
        let nvml = Nvml::init().map_err(|e| format!("NVML not available: {e}"));
        HostSampler { nvml, cpu_prev: None }
    }

    pub fn sample(&mut self) -> HostSample {
        let (gpus, no_gpu) = match &self.nvml {
            Ok(nvml) => match nvml.device_count() {
                Ok(0) => (Vec::new(), Some("NVML found no GPU".to_string())),
                Ok(n) => ((0..n).map(|i| read_gpu(nvml, i)).collect(), None),
                Err(e) => (Vec::new(), Some(format!("NVML cannot count GPUs: {e}"))),
            },
            Err(why) => (Vec::new(), Some(why.clone())),
        };
        let now = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_proc_stat(&s));
        let cpu_percent = match (self.cpu_prev, now) {
            (Some(prev), Some(now)) => cpu_percent(prev, now),
            _ => None,
        };
        self.cpu_prev = now.or(self.cpu_prev);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo(&s));
        HostSample {
            gpus,
            no_gpu,
            cpu_percent,
            mem_used_bytes: mem.map(|m| m.0),
            mem_total_bytes: mem.map(|m| m.1),
        }
    }
}

fn read_gpu(nvml: &Nvml, index: u32) -> GpuReading {
    let Ok(device) = nvml.device_by_index(index) else {
        return GpuReading {
            index,
            name: "(unreadable)".into(),
            ..GpuReading::default()
        };
    };
    let mem = device.memory_info().ok();
    GpuReading {
        index,
        name: device.name().unwrap_or_else(|_| "GPU".into()),
        util_percent: device.utilization_rates().ok().map(|u| u.gpu),
        mem_used_bytes: mem.as_ref().map(|m| m.used),
        mem_total_bytes: mem.as_ref().map(|m| m.total),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        power_w: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        power_limit_w: device
            .enforced_power_limit()
            .ok()
            .map(|mw| f64::from(mw) / 1000.0),
    }
}

/// Cumulative CPU jiffies from the `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

pub fn cpu_percent(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| 100.0 * busy as f64 / total as f64)
}

/// (used, total) bytes: MemTotal less MemAvailable.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_computes_load() {
        let a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").expect("a");
        assert_eq!(
            a,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let b = parse_proc_stat("cpu  200 0 100 1600 100 0 0 0 0 0\n").expect("b");
        assert_eq!(cpu_percent(a, b), Some(15.0));
        assert_eq!(cpu_percent(b, a), None, "counters went back");
        assert_eq!(cpu_percent(a, a), None, "no time passed");
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   4000 kB\n";
        assert_eq!(parse_meminfo(text), Some((12000 * 1024, 16000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn sampling_never_fails_without_a_gpu() {
        let mut sampler = HostSampler::new();
        let first = sampler.sample();
        let second = sampler.sample();
        // Either NVML works and lists GPUs, or the reason for showing none is given.
        assert!(second.gpus.is_empty() == second.no_gpu.is_some(), "{second:?}");
        assert!(first.cpu_percent.is_none());
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(second.mem_total_bytes.is_some_and(|t| t > 0));
        }
    }
}

//! The daemon's settings: the `daemon:` section of `config/ctmask.yaml`. Every key has a default
//! (`DaemonSettings::default()`, mirrored by `YAML_TEMPLATE`); unknown keys are rejected, and
//! `validate()` names the key of every bad value.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::SliceSettings;
use crate::device::DeviceSetting;

/// How the watcher learns about new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// inotify, except on network filesystems (NFS, SMB/CIFS, 9p, Ceph, FUSE), which are polled.
    Auto,
    Inotify,
    Poll,
}

/// How a series' verdict follows from its slices' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictRule {
    /// `covid` when at least `min_covid_slices` slices or `min_covid_percent` % of the classified
    /// slices are labelled covid; else `pneumonia` by the same thresholds; else `control`.
    CovidFraction,
    /// The class with the highest mean probability over the classified slices.
    MeanProbability,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesSettings {
    pub rule: VerdictRule,
    pub min_covid_slices: u32,
    pub min_covid_percent: f64,
}

impl Default for SeriesSettings {
    fn default() -> Self {
        SeriesSettings {
            rule: VerdictRule::CovidFraction,
            min_covid_slices: 3,
            min_covid_percent: 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Folders watched (recursively) for new slices.
    pub watch: Vec<PathBuf>,
    /// Where reports, masks and overlays go, one folder per series.
    pub output: PathBuf,
    /// The queue database and the lock file.
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Group owning the socket (None: the daemon's own group).
    pub socket_group: Option<String>,
    /// Octal permission bits of the socket (no bits for others).
    pub socket_mode: String,
    /// Group whose members may also pause, resume and retry (None: only root and the daemon's
    /// user); `socket_group` members may only read.
    pub control_group: Option<String>,
    /// Connections served at once; more are refused with `busy`.
    pub max_clients: usize,
    pub poll: PollMode,
    /// Seconds between polls (stability checks; full scans in poll mode).
    pub poll_interval_s: f64,
    /// Seconds between full rescans in inotify mode (catches missed events).
    pub rescan_interval_s: f64,
    /// After close-after-write, the file must keep its size and mtime this long (ms).
    pub settle_ms: u64,
    /// Polls with unchanged size and mtime before a file found by a scan is taken.
    pub stability_polls: u32,
    /// Name suffixes never taken (names starting with `.` never are either).
    pub ignore_suffixes: Vec<String>,
    /// Larger files are quarantined unread.
    pub max_file_bytes: u64,
    /// A series is complete when no slice of it arrived for this long (s).
    pub quiet_period_s: f64,
    /// Tries after the first failure before a job is quarantined.
    pub retries: u32,
    /// First retry delay (s); doubles each time up to `backoff_max_s`.
    pub backoff_s: f64,
    pub backoff_max_s: f64,
    /// Slices per model call.
    pub batch_size: usize,
    /// `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`; read by the screener.
    pub device: DeviceSetting,
    /// Intake pauses while the output disk has less free space than this...
    pub min_free_bytes: u64,
    /// ...or less than this percentage free.
    pub min_free_percent: f64,
    pub disk_check_interval_s: f64,
    /// When set, quarantined inputs are moved here; by default inputs are never touched.
    pub quarantine_dir: Option<PathBuf>,
    /// On SIGTERM, the slice in hand gets this long (s) before it is requeued.
    pub drain_timeout_s: f64,
    /// This many files in a row whose screening failed (not their reading) pause intake with an
    /// alert: the device or the models are broken, not the files. 0: never.
    pub device_failure_limit: u32,
    /// Done jobs, their thumbnails and the paths of files gone are deleted from the state after
    /// this many days (reports and outputs stay). 0: kept forever.
    pub retention_days: f64,
    /// A thread that makes no progress for this long (s) makes the daemon stop pinging the
    /// watchdog and exit non-zero (the worker's model call included).
    pub stall_timeout_s: f64,
    /// Whether `status` (API and dashboard) names the input of an open job, relative to its
    /// watch folder. Off by default: no API answer, report or output name carries an input path.
    pub show_input_paths: bool,
    pub series: SeriesSettings,
    /// The top-level `dicom:` block, copied here by the config loader (not a key of `daemon:`).
    #[serde(skip)]
    pub dicom: crate::dicom::DicomSettings,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            watch: vec![PathBuf::from("/srv/ctmask/incoming")],
            output: PathBuf::from("/var/lib/ctmask/results"),
            state: PathBuf::from("/var/lib/ctmask/state"),
            socket: PathBuf::from("/run/ctmask/ctmask.sock"),
            socket_group: None,
            socket_mode: "0660".into(),
            control_group: None,
            max_clients: 256,
            poll: PollMode::Auto,
            poll_interval_s: 2.0,
            rescan_interval_s: 300.0,
            settle_ms: 50,
            stability_polls: 2,
            ignore_suffixes: vec![".part".into(), ".tmp".into()],
            max_file_bytes: 256 << 20,
            quiet_period_s: 30.0,
            retries: 3,
            backoff_s: 5.0,
            backoff_max_s: 300.0,
            batch_size: 4,
            device: DeviceSetting::Auto,
            min_free_bytes: 1 << 30,
            min_free_percent: 2.0,
            disk_check_interval_s: 5.0,
            quarantine_dir: None,
            drain_timeout_s: 20.0,
            device_failure_limit: 5,
            retention_days: 30.0,
            stall_timeout_s: 600.0,
            show_input_paths: false,
            series: SeriesSettings::default(),
            dicom: crate::dicom::DicomSettings::default(),
        }
    }
}

/// Shortest poll, rescan and disk-check interval (s): shorter ones busy-loop the daemon.
pub const MIN_INTERVAL_S: f64 = 0.05;
/// Longest accepted duration setting (s): one day.
pub const MAX_SECONDS: f64 = 86_400.0;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid setting daemon.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A problem of the top-level `slice:` block the daemon reads with (`key` is dotted).
    #[error("invalid setting {key}: {reason}")]
    Slice { key: String, reason: String },
}

/// The settings the daemon runs with, checked the same way at start-up and on every reload: the
/// `daemon:` block made canonical and valid, and the `slice:` block free of problems (a library
/// caller's NaN would otherwise reach `f32::clamp` in the reader).
pub fn checked(daemon: DaemonSettings, slice: &SliceSettings) -> Result<DaemonSettings, SettingsError> {
    let daemon = daemon.canonicalized();
    daemon.validate()?;
    match slice.problems().into_iter().next() {
        Some((key, reason)) => Err(SettingsError::Slice { key, reason }),
        None => Ok(daemon),
    }
}

impl DaemonSettings {
    /// Every problem, each naming its key; empty when the settings are usable.
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        let mut bad = |key: &'static str, reason: String| out.push(SettingsError::Invalid { key, reason });
        if self.watch.is_empty() {
            bad("watch", "at least one folder is needed".into());
        }
        for (key, path) in [
            ("output", &self.output),
            ("state", &self.state),
            ("socket", &self.socket),
        ] {
            if path.as_os_str().is_empty() {
                bad(key, "must not be empty".into());
            }
        }
        // Compared as the folders they are (symlinks and `..` resolved), not as spelt.
        let canon = self.clone().canonicalized();
        let overlap = |a: &std::path::Path, b: &std::path::Path| a.starts_with(b) || b.starts_with(a);
        if canon
            .watch
            .iter()
            .any(|w| overlap(&canon.output, w) || overlap(&canon.state, w))
        {
            bad(
                "output",
                "output and state folders must not lie inside a watch folder or contain one".into(),
            );
        }
        match self.socket_mode() {
            None => bad(
                "socket_mode",
                format!("`{}` is not an octal mode such as 0660", self.socket_mode),
            ),
            Some(m) if m & 0o007 != 0 => bad(
                "socket_mode",
                format!(
                    "`{}` opens the socket to every user; use group permissions (0660, socket_group)",
                    self.socket_mode
                ),
            ),
            Some(_) => {}
        }
        // Intervals: a tiny one busy-loops the daemon, a huge one overflows a Duration.
        for (key, v, min) in [
            ("poll_interval_s", self.poll_interval_s, MIN_INTERVAL_S),
            ("rescan_interval_s", self.rescan_interval_s, MIN_INTERVAL_S),
            ("backoff_s", self.backoff_s, 0.01),
            ("backoff_max_s", self.backoff_max_s, 0.01),
            (
                "disk_check_interval_s",
                self.disk_check_interval_s,
                MIN_INTERVAL_S,
            ),
            ("quiet_period_s", self.quiet_period_s, 0.0),
            ("drain_timeout_s", self.drain_timeout_s, 0.0),
            ("stall_timeout_s", self.stall_timeout_s, 1.0),
        ] {
            if !(v.is_finite() && (min..=MAX_SECONDS).contains(&v)) {
                bad(
                    key,
                    format!("must be within [{min}, {MAX_SECONDS}] seconds, got {v}"),
                );
            }
        }
        if self.settle_ms > (MAX_SECONDS as u64) * 1000 {
            bad(
                "settle_ms",
                format!("must be at most {MAX_SECONDS} s, got {} ms", self.settle_ms),
            );
        }
        if !(1..=4096).contains(&self.max_clients) {
            bad(
                "max_clients",
                format!("must be within [1, 4096], got {}", self.max_clients),
            );
        }
        if self.batch_size > 256 {
            bad(
                "batch_size",
                format!("must be at most 256, got {}", self.batch_size),
            );
        }
        if !(self.retention_days.is_finite() && (0.0..=36_500.0).contains(&self.retention_days)) {
            bad(
                "retention_days",
                format!("must be within [0, 36500] days, got {}", self.retention_days),
            );
        }
        if self.device_failure_limit > 10_000 {
            bad(
                "device_failure_limit",
                format!("must be at most 10000, got {}", self.device_failure_limit),
            );
        }
        if self.retries > 100 {
            bad("retries", format!("must be at most 100, got {}", self.retries));
        }
        if self.stability_polls == 0 {
            bad("stability_polls", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            bad("batch_size", "must be at least 1".into());
        }
        if self.max_file_bytes == 0 {
            bad("max_file_bytes", "must be at least 1".into());
        }
        if !(self.min_free_percent.is_finite() && (0.0..100.0).contains(&self.min_free_percent)) {
            bad(
                "min_free_percent",
                format!("must be in [0, 100), got {}", self.min_free_percent),
            );
        }
        if !(0.0..=100.0).contains(&self.series.min_covid_percent) {
            bad(
                "series.min_covid_percent",
                format!("must be in [0, 100], got {}", self.series.min_covid_percent),
            );
        }
        if self.ignore_suffixes.iter().any(String::is_empty) {
            bad(
                "ignore_suffixes",
                "an empty suffix would ignore every file".into(),
            );
        }
        out
    }

    /// The watch, output and state folders made absolute and canonical (symlinks resolved), so
    /// that they and the paths found under them compare by what they are, not how they are spelt.
    pub fn canonicalized(mut self) -> DaemonSettings {
        self.watch = self.watch.iter().map(|w| super::input::canonical(w)).collect();
        self.output = super::input::canonical(&self.output);
        self.state = super::input::canonical(&self.state);
        self.dicom.receiver.incoming = super::input::canonical(&self.dicom.receiver.incoming);
        self
    }

    /// The folders inputs may be opened beneath: the watch folders and, with the DICOM receiver
    /// on, its incoming store (watched like them).
    pub fn input_roots(&self) -> Vec<PathBuf> {
        let mut roots = self.watch.clone();
        if self.dicom.receiver.enabled {
            roots.push(self.dicom.receiver.incoming.clone());
        }
        roots
    }

    /// The first problem, if any (see `problems` for all of them).
    pub fn validate(&self) -> Result<(), SettingsError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `socket_mode` parsed, when it is a valid octal mode no wider than 0777.
    pub fn socket_mode(&self) -> Option<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }

    /// Whether a file name is never taken (hidden or temporary).
    pub fn ignores_name(&self, name: &str) -> bool {
        name.starts_with('.') || self.ignore_suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }

    /// Delay before retry number `attempt` (1-based): `backoff_s * 2^(attempt-1)`, capped.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let secs = self.backoff_s * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        std::time::Duration::from_secs_f64(secs.min(self.backoff_max_s).max(0.0))
    }
}

/// The `daemon:` block of `config/ctmask.yaml`, with every key at its default.
pub const YAML_TEMPLATE: &str = r#"daemon:
  # Folders watched recursively for new slices (DICOM, PNG, JPEG). Read-only for the daemon.
  watch: [/srv/ctmask/incoming]
  # Reports, masks and overlays, one folder per series (series UID, or dir-<hash> for loose images).
  output: /var/lib/ctmask/results
  # Queue database (SQLite, WAL) and the lock file that keeps a second instance out.
  state: /var/lib/ctmask/state
  # Unix socket of the local API (`ctmask status`, `ctmask tui`).
  socket: /run/ctmask/ctmask.sock
  # Group owning the socket; null = the daemon's own group. Its members may connect.
  socket_group: null
  socket_mode: "0660"
  # Group whose members may also pause, resume and retry; null = only root and the daemon's user.
  # Members of socket_group (or the daemon's group) may only read (status, events, results).
  control_group: null
  # Connections served at once (each costs two small threads); more are refused with "busy".
  max_clients: 256
  # auto: inotify, but polling on network filesystems (NFS, SMB/CIFS, 9p, Ceph, FUSE); inotify; poll.
  poll: auto
  # Seconds between polls: stability checks, and full scans in poll mode.
  poll_interval_s: 2.0
  # Seconds between full rescans with inotify (catches files missed by events).
  rescan_interval_s: 300.0
  # After close-after-write, size and mtime must hold this long (ms) before the file is taken.
  settle_ms: 50
  # Files found by a scan are taken after this many polls with unchanged size and mtime.
  stability_polls: 2
  # Never taken: names starting with "." and names ending with one of these.
  ignore_suffixes: [".part", ".tmp"]
  # Larger files are quarantined unread (256 MiB).
  max_file_bytes: 268435456
  # A series is reported when no slice of it arrived for this long (s); late slices re-report it.
  quiet_period_s: 30.0
  # Retries after a failure before the job is quarantined, with exponential backoff.
  retries: 3
  backoff_s: 5.0
  backoff_max_s: 300.0
  # Slices per model call.
  batch_size: 4
  # auto (CUDA when available, else CPU), cpu, cuda, cuda:N.
  device: auto
  # Intake pauses while the output disk has less free space than either threshold (1 GiB, 2 %).
  min_free_bytes: 1073741824
  min_free_percent: 2.0
  disk_check_interval_s: 5.0
  # Move quarantined inputs here (needs write access to the watch folder); null = never touch inputs.
  quarantine_dir: null
  # On SIGTERM, seconds the slice in hand may take before it is requeued.
  drain_timeout_s: 20.0
  # After this many files in a row failed in the model (a broken GPU, say), intake pauses with an
  # alert until `retry_all` or resume, instead of failing and quarantining every file. 0: never.
  device_failure_limit: 5
  # Done jobs, their thumbnails and the paths of inputs no longer present leave the state database
  # after this many days (reports and outputs stay); 0 keeps them forever.
  retention_days: 30.0
  # A daemon thread (watcher, intake, reader, worker, server) that makes no progress for this
  # long (s) stops the watchdog pings and makes the daemon exit non-zero, so systemd restarts it.
  stall_timeout_s: 600.0
  # true: `status` and the dashboard show the path of a pending, failed or quarantined input,
  # relative to its watch folder (file names often carry patient names). Off: jobs by id only.
  show_input_paths: false
  series:
    # covid_fraction: covid if >= min_covid_slices slices or >= min_covid_percent % of slices are
    # covid (else pneumonia by the same thresholds, else control); mean_probability: the class with
    # the highest mean probability.
    rule: covid_fraction
    min_covid_slices: 3
    min_covid_percent: 10.0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        daemon: DaemonSettings,
    }

    #[test]
    fn template_matches_defaults() {
        let top: Top = serde_yaml_ng::from_str(YAML_TEMPLATE).expect("template parses");
        assert_eq!(top.daemon, DaemonSettings::default());
        assert!(top.daemon.problems().is_empty());
    }

    #[test]
    fn rejects_unknown_keys_and_names_bad_ones() {
        let err = serde_yaml_ng::from_str::<DaemonSettings>("quiet_perod_s: 3").expect_err("typo");
        assert!(err.to_string().contains("quiet_perod_s"), "{err}");
        // the device is typed: a bad one is refused where the YAML is read
        let err = serde_yaml_ng::from_str::<DaemonSettings>("device: tpu").expect_err("device");
        assert!(
            err.to_string().contains("`tpu` is not auto, cpu, cuda or cuda:N"),
            "{err}"
        );
        let s = DaemonSettings {
            batch_size: 0,
            socket_mode: "rw".into(),
            output: "/srv/ctmask/incoming/out".into(),
            ..DaemonSettings::default()
        };
        let msgs: Vec<String> = s.problems().iter().map(ToString::to_string).collect();
        for key in ["daemon.batch_size", "daemon.socket_mode", "daemon.output"] {
            assert!(msgs.iter().any(|m| m.contains(key)), "{key} missing in {msgs:?}");
        }
        assert!(s.validate().is_err());
        let nan = SliceSettings {
            hu_min: f32::NAN,
            ..SliceSettings::default()
        };
        assert!(
            checked(DaemonSettings::default(), &nan)
                .is_err_and(|e| e.to_string().contains("invalid setting slice.hu_min"))
        );
    }

    #[test]
    fn names_mode_and_backoff() {
        let s = DaemonSettings::default();
        assert_eq!(s.socket_mode(), Some(0o660));
        assert!(s.ignores_name(".hidden") && s.ignores_name("a.dcm.part") && s.ignores_name("x.tmp"));
        assert!(!s.ignores_name("IM0001") && !s.ignores_name("a.png"));
        assert_eq!(s.backoff(1).as_secs(), 5);
        assert_eq!(s.backoff(3).as_secs(), 20);
        assert_eq!(s.backoff(30).as_secs(), 300);
    }
}

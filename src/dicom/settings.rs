//! The `dicom:` block of `config/ctmask.yaml`: which DICOM objects are written beside each
//! `series.json`, the receiver (C-STORE SCP) and forwarding (C-STORE SCU). Everything is off by
//! default. Value checks that concern one value (AE titles, ports, addresses) live in the value
//! types, so a bad value is refused while the YAML parser still knows its line; checks across keys
//! are in [`DicomSettings::problems`], each naming its key.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A DICOM object ctmask writes per series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// Segmentation (BINARY): one segment per lesion class.
    Seg,
    /// Comprehensive 3D SR, TID 1500 measurement report.
    Sr,
    /// Secondary Capture overlays, one per slice.
    Sc,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Seg => "seg",
            ObjectKind::Sr => "sr",
            ObjectKind::Sc => "sc",
        }
    }

    /// The kind spelled `s` (`as_str`), None for anything else.
    pub fn parse(s: &str) -> Option<ObjectKind> {
        [ObjectKind::Seg, ObjectKind::Sr, ObjectKind::Sc]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An application entity title: 1 to 16 characters of printable ASCII without `\`, not all spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AeTitle(pub String);

impl TryFrom<String> for AeTitle {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || s.len() > 16 {
            return Err(format!("an AE title has 1 to 16 characters, got {s:?}"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\')
        {
            return Err(format!(
                "an AE title is printable ASCII without backslashes, got {s:?}"
            ));
        }
        Ok(AeTitle(t.to_string()))
    }
}

impl From<AeTitle> for String {
    fn from(a: AeTitle) -> String {
        a.0
    }
}

impl AeTitle {
    pub fn new(s: &str) -> AeTitle {
        AeTitle(s.to_string())
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Port(pub u16);

impl TryFrom<i64> for Port {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u16::try_from(v)
            .ok()
            .filter(|p| *p > 0)
            .map(Port)
            .ok_or_else(|| format!("must be a port within [1, 65535], got {v}"))
    }
}

impl From<Port> for i64 {
    fn from(p: Port) -> i64 {
        i64::from(p.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverSettings {
    pub enabled: bool,
    /// The AE title callers must address (called AE title).
    pub ae_title: AeTitle,
    /// Listen address; loopback unless the scanner or router is on another machine.
    pub bind: IpAddr,
    pub port: Port,
    /// Calling AE titles allowed to store; empty: any caller.
    pub allowed_calling_ae_titles: Vec<AeTitle>,
    /// Associations served at once; further callers wait in the listen backlog.
    pub max_associations: usize,
    /// Largest PDU this side receives (bytes).
    pub max_pdu_bytes: u32,
    /// Received instances are written here (temporary name, fsync, rename) and queued.
    pub incoming: PathBuf,
    /// An association idle this long (s) is closed.
    pub timeout_s: f64,
}

impl Default for ReceiverSettings {
    fn default() -> Self {
        ReceiverSettings {
            enabled: false,
            ae_title: AeTitle::new("CTMASK"),
            bind: IpAddr::from([127, 0, 0, 1]),
            port: Port(11112),
            allowed_calling_ae_titles: Vec::new(),
            max_associations: 4,
            max_pdu_bytes: 65536,
            incoming: PathBuf::from("/var/lib/ctmask/incoming"),
            timeout_s: 60.0,
        }
    }
}

/// A C-STORE destination (a PACS, a router, a viewer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The destination's AE title (called AE title).
    pub ae_title: AeTitle,
    pub host: String,
    pub port: Port,
}

impl Destination {
    /// `AE@host:port`, the destination's name in the outbox and the status.
    pub fn name(&self) -> String {
        format!("{}@{}:{}", self.ae_title.0, self.host, self.port.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardSettings {
    /// Where results are sent; empty: no forwarding.
    pub destinations: Vec<Destination>,
    /// Which of the written objects are sent (each must also be in `dicom.outputs`).
    pub objects: Vec<ObjectKind>,
    /// ctmask's AE title when it calls.
    pub calling_ae_title: AeTitle,
    /// Tries after the first failure before an object is marked failed (then retried on request).
    pub retries: u32,
    /// First retry delay (s); doubles each time up to `backoff_max_s`.
    pub backoff_s: f64,
    pub backoff_max_s: f64,
    /// Connection and response timeout (s).
    pub timeout_s: f64,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            destinations: Vec::new(),
            objects: vec![ObjectKind::Seg, ObjectKind::Sr, ObjectKind::Sc],
            calling_ae_title: AeTitle::new("CTMASK"),
            retries: 10,
            backoff_s: 30.0,
            backoff_max_s: 3600.0,
            timeout_s: 30.0,
        }
    }
}

impl ForwardSettings {
    /// Delay before retry number `attempt` (1-based): `backoff_s * 2^(attempt-1)`, capped.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let secs = self.backoff_s * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        std::time::Duration::from_secs_f64(secs.min(self.backoff_max_s).max(0.0))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomSettings {
    /// DICOM objects written beside each series.json: seg, sr, sc; empty: none.
    pub outputs: Vec<ObjectKind>,
    pub receiver: ReceiverSettings,
    pub forward: ForwardSettings,
}

impl DicomSettings {
    /// Whether the daemon needs the network (receiver or forwarding configured).
    pub fn uses_network(&self) -> bool {
        self.receiver.enabled || !self.forward.destinations.is_empty()
    }

    /// Every problem across keys, each naming its key (`dicom.<key>: <reason>`).
    pub fn problems(
        &self,
        watch: &[PathBuf],
        output: &std::path::Path,
        state: &std::path::Path,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let r = &self.receiver;
        if r.max_associations == 0 {
            out.push("dicom.receiver.max_associations: must be at least 1".to_string());
        }
        if !(4096..=1 << 24).contains(&r.max_pdu_bytes) {
            out.push(format!(
                "dicom.receiver.max_pdu_bytes: must be within [4096, 16777216], got {}",
                r.max_pdu_bytes
            ));
        }
        if r.enabled {
            if r.incoming.as_os_str().is_empty() {
                out.push("dicom.receiver.incoming: must not be empty".to_string());
            }
            if watch
                .iter()
                .any(|w| r.incoming.starts_with(w) || w.starts_with(&r.incoming))
                || r.incoming.starts_with(output)
                || r.incoming.starts_with(state)
            {
                out.push(
                    "dicom.receiver.incoming: must lie outside the watch, output and state folders (the daemon watches it itself)"
                        .to_string(),
                );
            }
        }
        let f = &self.forward;
        for (key, v) in [
            ("dicom.receiver.timeout_s", r.timeout_s),
            ("dicom.forward.backoff_s", f.backoff_s),
            ("dicom.forward.backoff_max_s", f.backoff_max_s),
            ("dicom.forward.timeout_s", f.timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                out.push(format!("{key}: must be a positive number of seconds, got {v}"));
            }
        }
        for o in &f.objects {
            if !f.destinations.is_empty() && !self.outputs.contains(o) {
                out.push(format!(
                    "dicom.forward.objects: {} is forwarded but not written (add it to dicom.outputs)",
                    o.as_str()
                ));
            }
        }
        for d in &f.destinations {
            if d.host.trim().is_empty() {
                out.push("dicom.forward.destinations: a destination has an empty host".to_string());
            }
        }
        out
    }
}

/// The `dicom:` block of `config/ctmask.yaml`, with every key at its default.
pub const YAML_TEMPLATE: &str = r#"dicom:
  # DICOM objects written beside each series.json (then reissued with each new revision):
  # seg (Segmentation: GGO and consolidation), sr (TID 1500 measurement report), sc (secondary
  # capture overlays, one per slice). Only for DICOM series; [] = none.
  outputs: []
  receiver:
    # A DICOM C-STORE/C-ECHO receiver (SCP) beside the watch folders; off by default.
    enabled: false
    ae_title: CTMASK
    # Loopback by default; 0.0.0.0 (or the scanner-facing address) to accept other machines.
    bind: 127.0.0.1
    port: 11112
    # Calling AE titles allowed to store; [] = any caller.
    allowed_calling_ae_titles: []
    max_associations: 4
    max_pdu_bytes: 65536
    # Received instances are stored here (durably, before success is returned) and screened.
    incoming: /var/lib/ctmask/incoming
    # Idle associations are closed after this many seconds.
    timeout_s: 60.0
  forward:
    # C-STORE destinations for the results, e.g. [{ae_title: PACS, host: 10.0.0.5, port: 104}].
    destinations: []
    # Which written objects are sent (each must be in outputs).
    objects: [seg, sr, sc]
    calling_ae_title: CTMASK
    # Tries after a failure before an object is marked failed (`ctmask status --retry-forward`).
    retries: 10
    backoff_s: 30.0
    backoff_max_s: 3600.0
    timeout_s: 30.0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Top {
        dicom: DicomSettings,
    }

    #[test]
    fn template_matches_defaults_and_values_are_checked() {
        let top: Top = serde_yaml_ng::from_str(YAML_TEMPLATE).expect("template parses");
        assert_eq!(top.dicom, DicomSettings::default());
        assert!(!top.dicom.uses_network());
        let none: &[PathBuf] = &[];
        assert!(top.dicom.problems(none, "/o".as_ref(), "/s".as_ref()).is_empty());
        for (yaml, needle) in [
            ("receiver:\n  ae_title: MUCH_TOO_LONG_TITLE\n", "1 to 16"),
            ("receiver:\n  port: 0\n", "[1, 65535]"),
            ("receiver:\n  bind: localhost\n", "IP address"),
            ("outputs: [seg, rtstruct]\n", "rtstruct"),
        ] {
            let e = serde_yaml_ng::from_str::<DicomSettings>(yaml)
                .expect_err(yaml)
                .to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
        let s = DicomSettings {
            outputs: vec![ObjectKind::Seg],
            receiver: ReceiverSettings {
                enabled: true,
                incoming: "/srv/in/dicom".into(),
                max_associations: 0,
                ..ReceiverSettings::default()
            },
            forward: ForwardSettings {
                destinations: vec![Destination {
                    ae_title: AeTitle::new("PACS"),
                    host: "pacs".into(),
                    port: Port(104),
                }],
                ..ForwardSettings::default()
            },
        };
        let p = s.problems(&["/srv/in".into()], "/o".as_ref(), "/s".as_ref());
        for key in [
            "dicom.receiver.max_associations",
            "dicom.receiver.incoming",
            "dicom.forward.objects: sr",
            "dicom.forward.objects: sc",
        ] {
            assert!(p.iter().any(|m| m.starts_with(key)), "{key} missing in {p:?}");
        }
        assert!(s.uses_network());
        assert_eq!(s.forward.destinations[0].name(), "PACS@pacs:104");
        assert_eq!(s.forward.backoff(2).as_secs(), 60);
        assert_eq!(s.forward.backoff(30).as_secs(), 3600);
    }
}

//! The one vocabulary of the wire, the queue database and the reports: a slice's label, a
//! series' verdict, a job's state and an error's code. Each is spelled the same everywhere (serde
//! snake_case, `as_str` for SQL and text); `tests::spellings_are_pinned` holds the strings, so the
//! JSON on disk, in the database and on the wire stays what earlier versions wrote.

use serde::{Deserialize, Serialize};

/// The classifier's label of one slice, in the classifier's output order (`Label::ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Control,
    Pneumonia,
    Covid,
}

impl Label {
    /// In the classifier's output order (`findings::CLASS_NAMES`).
    pub const ALL: [Label; 3] = [Label::Control, Label::Pneumonia, Label::Covid];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Control => "control",
            Label::Pneumonia => "pneumonia",
            Label::Covid => "covid",
        }
    }

    /// The label of a class name (`findings::CLASS_NAMES`), None for anything else.
    pub fn parse(s: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// The label of the classifier's output `index`.
    pub fn from_index(index: usize) -> Option<Label> {
        Label::ALL.get(index).copied()
    }
}

/// A series' verdict: a label, or `unclassified` when no slice has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Control,
    Pneumonia,
    Covid,
    #[default]
    Unclassified,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Control => "control",
            Verdict::Pneumonia => "pneumonia",
            Verdict::Covid => "covid",
            Verdict::Unclassified => "unclassified",
        }
    }

    /// The verdict of one slice (`unclassified` without a label): also the key of a report's
    /// slice counts.
    pub fn of_slice(label: Option<Label>) -> Verdict {
        label.map_or(Verdict::Unclassified, Verdict::from)
    }
}

impl From<Label> for Verdict {
    fn from(label: Label) -> Verdict {
        match label {
            Label::Control => Verdict::Control,
            Label::Pneumonia => Verdict::Pneumonia,
            Label::Covid => Verdict::Covid,
        }
    }
}

/// Where a job is in the queue (the `jobs.state` column and `JobInfo::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Done,
    /// Failed, waiting for a retry.
    Failed,
    /// Failed too often or unreadable: kept aside with its reason.
    Quarantined,
    #[serde(other)]
    Unknown,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Quarantined,
        JobState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Quarantined => "quarantined",
            JobState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> JobState {
        JobState::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .unwrap_or(JobState::Unknown)
    }
}

/// Why the daemon answered `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `max_clients` are connected.
    Busy,
    /// Not allowed: the peer lacks the role the request needs.
    Forbidden,
    /// No `hello` in time, or idle too long.
    Timeout,
    /// A line that is not a request, or longer than the request limit.
    BadRequest,
    UnsupportedVersion,
    HelloRequired,
    AlreadySubscribed,
    UnknownRequest,
    /// The job or outbox row cannot be retried.
    RetryRefused,
    NotFound,
    Internal,
    /// A code this build does not know (from a newer daemon).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Busy,
        ErrorCode::Forbidden,
        ErrorCode::Timeout,
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HelloRequired,
        ErrorCode::AlreadySubscribed,
        ErrorCode::UnknownRequest,
        ErrorCode::RetryRefused,
        ErrorCode::NotFound,
        ErrorCode::Internal,
        ErrorCode::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Busy => "busy",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::RetryRefused => "retry_refused",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }
}

/// Lets a test or a log line compare a code with its spelling.
impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
display_as_str!(Label, Verdict, JobState, ErrorCode);

#[cfg(test)]
mod tests {
    use super::*;

    /// Serde and `as_str` agree, and every spelling is the one on disk, in the database and on
    /// the wire today.
    fn pinned<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + Copy>(
        values: &[(T, &str)],
        as_str: fn(T) -> &'static str,
    ) {
        for &(v, s) in values {
            assert_eq!(serde_json::to_string(&v).expect("encode"), format!("\"{s}\""));
            assert_eq!(as_str(v), s);
            assert_eq!(serde_json::from_str::<T>(&format!("\"{s}\"")).expect("decode"), v);
        }
    }

    #[test]
    fn spellings_are_pinned() {
        use ErrorCode as E;
        pinned(
            &[
                (Label::Control, "control"),
                (Label::Pneumonia, "pneumonia"),
                (Label::Covid, "covid"),
            ],
            Label::as_str,
        );
        pinned(
            &[
                (Verdict::Control, "control"),
                (Verdict::Pneumonia, "pneumonia"),
                (Verdict::Covid, "covid"),
                (Verdict::Unclassified, "unclassified"),
            ],
            Verdict::as_str,
        );
        pinned(
            &[
                (JobState::Pending, "pending"),
                (JobState::Running, "running"),
                (JobState::Done, "done"),
                (JobState::Failed, "failed"),
                (JobState::Quarantined, "quarantined"),
                (JobState::Unknown, "unknown"),
            ],
            JobState::as_str,
        );
        pinned(
            &[
                (E::Busy, "busy"),
                (E::Forbidden, "forbidden"),
                (E::Timeout, "timeout"),
                (E::BadRequest, "bad_request"),
                (E::UnsupportedVersion, "unsupported_version"),
                (E::HelloRequired, "hello_required"),
                (E::AlreadySubscribed, "already_subscribed"),
                (E::UnknownRequest, "unknown_request"),
                (E::RetryRefused, "retry_refused"),
                (E::NotFound, "not_found"),
                (E::Internal, "internal"),
                (E::Other, "other"),
            ],
            ErrorCode::as_str,
        );
        assert_eq!(Label::ALL.map(Label::as_str), crate::findings::CLASS_NAMES);
        assert_eq!(ErrorCode::ALL.len(), 12);
    }

    #[test]
    fn unknown_spellings_from_newer_peers() {
        assert_eq!(JobState::parse("paused"), JobState::Unknown);
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"rate_limited\"").expect("other"),
            ErrorCode::Other
        );
        assert_eq!(Label::parse("covid"), Some(Label::Covid));
        assert_eq!(Label::parse("unclassified"), None);
        assert_eq!(Verdict::of_slice(None), Verdict::Unclassified);
        assert_eq!(Verdict::of_slice(Some(Label::Pneumonia)), Verdict::Pneumonia);
    }
}

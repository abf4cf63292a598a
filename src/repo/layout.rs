//! Names in the job folder: job names, snapshot ids and the files of a
//! snapshot.
//!
//! ```text
//! /<share>/<path>/<job>/
//!     <job>-<YYYYMMDDTHHMMSSZ>.tar.zst             archive, one volume
//!     <job>-<…>.tar.zst.001, .002, …               or volumes when split
//!     <job>-<…>.tar.zst.age[.001 …]                the same, age-encrypted
//!     <job>-<…>.manifest.json                      written last: the commit marker
//!     <name>.partial                               an upload not verified yet
//!     .lock                                        who is writing
//! ```
//!
//! Encryption is applied to the whole compressed stream before it is split,
//! so the `.age` suffix comes before the volume number and
//! `cat <id>.tar.zst.age.* | age -d -i KEY | zstd -d | tar -x` restores an
//! encrypted snapshot by hand. Volume numbers have exactly three digits
//! (`001` to `999`) so that a shell glob lists them in stream order; this
//! caps a snapshot at 999 volumes.
//!
//! Times in names are UTC with second precision. Anything in the folder that
//! does not parse here is *foreign* and must never be touched.
//!
//! This module is pure: it knows nothing about targets or the network.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Name of the lock file.
pub const LOCK_NAME: &str = ".lock";
/// Suffix of an upload that has not been verified and renamed yet.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Suffix of a snapshot's manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Suffix of a snapshot archive (zstd-compressed tar).
pub const ARCHIVE_SUFFIX: &str = ".tar.zst";
/// Extra suffix of an age-encrypted archive.
pub const AGE_SUFFIX: &str = ".age";
/// Highest volume number (three digits keep glob order = stream order).
pub const MAX_VOLUMES: u32 = 999;
/// Longest accepted job name.
pub const MAX_JOB_NAME_LEN: usize = 64;

/// `chrono` format of the time part of a snapshot id.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Length of the time part (`YYYYMMDDTHHMMSSZ`).
const TIME_LEN: usize = 16;

/// Why a name could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job name with characters or a shape we do not allow.
    #[error(
        "invalid job name {name:?}: {reason} (use letters, digits, `.`, `_` and `-`, not starting with `.`)"
    )]
    InvalidJobName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A string that is not `<job>-<YYYYMMDDTHHMMSSZ>`.
    #[error("{name:?} is not a snapshot id (expected <job>-YYYYMMDDTHHMMSSZ, in UTC)")]
    InvalidSnapshotId {
        /// The refused string.
        name: String,
    },
    /// A volume number outside `1..=999`.
    #[error("volume number {index} is out of range 1..={MAX_VOLUMES}")]
    VolumeOutOfRange {
        /// The refused number.
        index: u32,
    },
}

/// A validated job name: `[A-Za-z0-9._-]`, 1 to 64 characters, not
/// starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobName(String);

impl JobName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidJobName`] when it is empty, too long, starts with a
    /// dot or holds another character than letters, digits, `.`, `_`, `-`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_JOB_NAME_LEN {
            Some("it is longer than 64 characters")
        } else if name.starts_with('.') {
            Some("it starts with `.`")
        } else if !name.bytes().all(is_job_byte) {
            Some("it holds a character that is not allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidJobName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_job_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for JobName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<JobName> for String {
    fn from(name: JobName) -> String {
        name.0
    }
}

/// Whether an archive is age-encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Encryption {
    /// Plain `.tar.zst`.
    #[default]
    Plain,
    /// `.tar.zst.age`: the compressed stream encrypted with age.
    Age,
}

/// A snapshot id: `<job>-<YYYYMMDDTHHMMSSZ>`, the job and the UTC start time
/// to the second. Ordered by time, then job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId {
    job: JobName,
    time: DateTime<Utc>,
}

impl SnapshotId {
    /// The id of a snapshot of `job` started at `time` (fractions of a
    /// second are dropped).
    pub fn new(job: JobName, time: DateTime<Utc>) -> Self {
        Self {
            job,
            time: time.trunc_subsecs(0),
        }
    }

    /// Parses `<job>-<YYYYMMDDTHHMMSSZ>`.
    ///
    /// # Errors
    /// [`Error::InvalidSnapshotId`] when the shape or the time is wrong, or
    /// the job part is not a valid job name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidSnapshotId { name: s.to_owned() };
        let split = s.len().checked_sub(TIME_LEN + 1).ok_or_else(invalid)?;
        let (job, rest) = (s.get(..split), s.get(split..));
        let (Some(job), Some(rest)) = (job, rest) else {
            return Err(invalid());
        };
        let time = rest
            .strip_prefix('-')
            .and_then(parse_time)
            .ok_or_else(invalid)?;
        let job = JobName::new(job).map_err(|_| invalid())?;
        Ok(Self { job, time })
    }

    /// The job this snapshot belongs to.
    pub fn job(&self) -> &JobName {
        &self.job
    }

    /// When the snapshot was started (UTC, whole seconds).
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    /// `<id>.manifest.json`.
    pub fn manifest_name(&self) -> String {
        format!("{self}{MANIFEST_SUFFIX}")
    }

    /// `<id>.tar.zst` or `<id>.tar.zst.age`: the single-volume archive name.
    pub fn archive_name(&self, encryption: Encryption) -> String {
        match encryption {
            Encryption::Plain => format!("{self}{ARCHIVE_SUFFIX}"),
            Encryption::Age => format!("{self}{ARCHIVE_SUFFIX}{AGE_SUFFIX}"),
        }
    }

    /// `<archive name>.NNN`: the name of volume `index` (1-based).
    ///
    /// # Errors
    /// [`Error::VolumeOutOfRange`] unless `1 <= index <= 999`.
    pub fn volume_name(&self, encryption: Encryption, index: u32) -> Result<String, Error> {
        if !(1..=MAX_VOLUMES).contains(&index) {
            return Err(Error::VolumeOutOfRange { index });
        }
        Ok(format!("{}.{index:03}", self.archive_name(encryption)))
    }
}

impl Ord for SnapshotId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| self.job.cmp(&other.job))
    }
}

impl PartialOrd for SnapshotId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.job, self.time.format(TIME_FORMAT))
    }
}

impl FromStr for SnapshotId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.to_string()
    }
}

/// Parses exactly `YYYYMMDDTHHMMSSZ` (digits only, a valid UTC time).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let shape_ok = b.len() == TIME_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    if !shape_ok {
        return None;
    }
    let time = NaiveDateTime::parse_from_str(s, TIME_FORMAT)
        .ok()?
        .and_utc();
    // chrono accepts second 60 as a leap second; no clock of ours writes it.
    (time.nanosecond() == 0).then_some(time)
}

/// What one of our files is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// An archive or one of its volumes.
    Archive {
        /// The snapshot it belongs to.
        id: SnapshotId,
        /// Plain or age-encrypted.
        encryption: Encryption,
        /// `None` for a single-volume archive, else the 1-based volume.
        volume: Option<u32>,
    },
    /// A manifest.
    Manifest {
        /// The snapshot it commits.
        id: SnapshotId,
    },
    /// An upload not verified and renamed yet.
    Partial {
        /// What the file becomes once renamed (an archive or a manifest).
        of: Box<FileKind>,
        /// The name it will be renamed to.
        final_name: String,
    },
    /// The lock file.
    Lock,
}

impl FileKind {
    /// The snapshot the file belongs to, if any (not for the lock).
    pub fn snapshot_id(&self) -> Option<&SnapshotId> {
        match self {
            FileKind::Archive { id, .. } | FileKind::Manifest { id } => Some(id),
            FileKind::Partial { of, .. } => of.snapshot_id(),
            FileKind::Lock => None,
        }
    }
}

/// `<name>.partial`: the name an upload of `name` uses until verified.
pub fn partial_name(name: &str) -> String {
    format!("{name}{PARTIAL_SUFFIX}")
}

/// Classifies a file name of the folder of `job`. `None` means the file is
/// not ours (foreign) and must be left alone; this includes snapshots of
/// other jobs.
pub fn parse_name(job: &JobName, name: &str) -> Option<FileKind> {
    if name == LOCK_NAME {
        return Some(FileKind::Lock);
    }
    if let Some(final_name) = name.strip_suffix(PARTIAL_SUFFIX) {
        let of = parse_final(job, final_name)?;
        return Some(FileKind::Partial {
            of: Box::new(of),
            final_name: final_name.to_owned(),
        });
    }
    parse_final(job, name)
}

/// Parses an archive, volume or manifest name of `job`.
fn parse_final(job: &JobName, name: &str) -> Option<FileKind> {
    let rest = name.strip_prefix(job.as_str())?.strip_prefix('-')?;
    let (time, rest) = (rest.get(..TIME_LEN)?, rest.get(TIME_LEN..)?);
    let id = SnapshotId {
        job: job.clone(),
        time: parse_time(time)?,
    };
    if rest == MANIFEST_SUFFIX {
        return Some(FileKind::Manifest { id });
    }
    let rest = rest.strip_prefix(ARCHIVE_SUFFIX)?;
    let (encryption, rest) = match rest.strip_prefix(AGE_SUFFIX) {
        Some(rest) => (Encryption::Age, rest),
        None => (Encryption::Plain, rest),
    };
    let volume = match rest {
        "" => None,
        _ => Some(parse_volume(rest.strip_prefix('.')?)?),
    };
    Some(FileKind::Archive {
        id,
        encryption,
        volume,
    })
}

/// Parses `NNN` (exactly three digits, 001 to 999).
fn parse_volume(s: &str) -> Option<u32> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (1..=MAX_VOLUMES).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> JobName {
        JobName::new("home-pc").unwrap()
    }

    fn id() -> SnapshotId {
        let t = Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 5).unwrap();
        SnapshotId::new(job(), t)
    }

    #[test]
    fn job_names() {
        for ok in ["a", "home-pc", "A.b_c-1", "x".repeat(64).as_str()] {
            assert!(JobName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "..",
            "x".repeat(65).as_str(),
        ] {
            assert!(JobName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_format_and_parse() {
        let id = id();
        assert_eq!(id.to_string(), "home-pc-20260329T013005Z");
        assert_eq!(SnapshotId::parse("home-pc-20260329T013005Z").unwrap(), id);
        let with_nanos = Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 5).unwrap()
            + chrono::Duration::milliseconds(999);
        assert_eq!(SnapshotId::new(job(), with_nanos), id);
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "home-pc",
            "-20260329T013005Z",
            "home-pc-20260329T013005",
            "home-pc-20260329t013005Z",
            "home-pc-20261329T013005Z",
            "home-pc-20260229T013005Z",
            "home-pc-20260329T013060Z",
            "home-pc-+0260329T013005Z",
            "home-pc_20260329T013005Z",
            ".x-20260329T013005Z",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_serialize_as_strings() {
        let json = serde_json::to_string(&id()).unwrap();
        assert_eq!(json, "\"home-pc-20260329T013005Z\"");
        let back: SnapshotId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id());
        assert!(serde_json::from_str::<SnapshotId>("\"nope\"").is_err());
    }

    #[test]
    fn file_names() {
        let id = id();
        assert_eq!(id.manifest_name(), "home-pc-20260329T013005Z.manifest.json");
        assert_eq!(
            id.archive_name(Encryption::Plain),
            "home-pc-20260329T013005Z.tar.zst"
        );
        assert_eq!(
            id.volume_name(Encryption::Age, 2).unwrap(),
            "home-pc-20260329T013005Z.tar.zst.age.002"
        );
        assert!(id.volume_name(Encryption::Plain, 0).is_err());
        assert!(id.volume_name(Encryption::Plain, 1000).is_err());
    }

    #[test]
    fn names_round_trip_through_parse() {
        let id = id();
        let cases = [
            (
                id.archive_name(Encryption::Plain),
                FileKind::Archive {
                    id: id.clone(),
                    encryption: Encryption::Plain,
                    volume: None,
                },
            ),
            (
                id.volume_name(Encryption::Plain, 999).unwrap(),
                FileKind::Archive {
                    id: id.clone(),
                    encryption: Encryption::Plain,
                    volume: Some(999),
                },
            ),
            (
                id.archive_name(Encryption::Age),
                FileKind::Archive {
                    id: id.clone(),
                    encryption: Encryption::Age,
                    volume: None,
                },
            ),
            (id.manifest_name(), FileKind::Manifest { id: id.clone() }),
            (LOCK_NAME.to_owned(), FileKind::Lock),
        ];
        for (name, kind) in cases {
            assert_eq!(parse_name(&job(), &name), Some(kind.clone()), "{name}");
            let partial = partial_name(&name);
            if kind != FileKind::Lock {
                assert_eq!(
                    parse_name(&job(), &partial),
                    Some(FileKind::Partial {
                        of: Box::new(kind),
                        final_name: name.clone()
                    }),
                    "{partial}"
                );
            }
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        let job = job();
        for name in [
            "notes.txt",
            ".lock.partial",
            "home-pc-20260329T013005Z",
            "home-pc-20260329T013005Z.tar",
            "home-pc-20260329T013005Z.tar.zst.000",
            "home-pc-20260329T013005Z.tar.zst.01",
            "home-pc-20260329T013005Z.tar.zst.1000",
            "home-pc-20260329T013005Z.tar.zst.partial.partial",
            "home-pc-20260329T013005Z.tar.gz",
            "home-pc-20260329T013005Z.manifest.json.bak",
            "other-20260329T013005Z.tar.zst",
            "home-pc-x-20260329T013005Z.tar.zst",
            "home-pc-20260329T253005Z.tar.zst",
            "#recycle",
            "@eaDir",
        ] {
            assert_eq!(parse_name(&job, name), None, "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn ids_round_trip(job in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", secs in 0i64..4_102_444_800) {
            let job = JobName::new(job).unwrap();
            let id = SnapshotId::new(job.clone(), DateTime::from_timestamp(secs, 0).unwrap());
            proptest::prop_assert_eq!(SnapshotId::parse(&id.to_string()).unwrap(), id.clone());
            let volume = id.volume_name(Encryption::Age, 7).unwrap();
            let parsed = parse_name(&job, &partial_name(&volume));
            proptest::prop_assert_eq!(parsed.and_then(|k| k.snapshot_id().cloned()), Some(id));
        }

        #[test]
        fn any_name_parses_without_panicking(name in "\\PC{0,60}") {
            let _ = parse_name(&job(), &name);
            let _ = SnapshotId::parse(&name);
        }
    }
}

//! The snapshot manifest: a stable, versioned JSON record of what a
//! snapshot contains. It is written last and is the commit marker of a
//! snapshot, so it must stay readable by future synback versions.
//!
//! Compatibility rule: fields may be added (older readers ignore them);
//! renaming, removing or changing the meaning of a field bumps
//! [`MANIFEST_FORMAT`], and readers refuse formats newer than theirs.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::pack::{PackCounts, PackOptions, PackSummary, SourcePrefix};

/// The manifest format this build writes and the newest it reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a snapshot contains. Serialised as JSON with [`Manifest::to_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// Format version ([`MANIFEST_FORMAT`] when written by this build).
    pub format: u32,
    /// Snapshot id (`<job>-<YYYYMMDDTHHMMSSZ>`, chosen by the caller).
    pub snapshot: String,
    /// Job name.
    pub job: String,
    /// When the snapshot was started (UTC).
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// Host name of the machine that was backed up.
    pub host: String,
    /// Version of the synback that wrote it.
    pub agent_version: String,
    /// Source roots and their prefixes in the archive.
    pub sources: Vec<SourcePrefix>,
    /// Exclude globs in effect.
    pub excludes: Vec<String>,
    /// Marker names in effect (`exclude_if_present`).
    pub exclude_if_present: Vec<String>,
    /// Whether the walk stayed on one file system per source.
    pub one_file_system: bool,
    /// Compression settings.
    pub compression: Compression,
    /// Encryption settings (`None` = plain).
    pub encryption: Option<Encryption>,
    /// The volumes, in order.
    pub volumes: Vec<VolumeRecord>,
    /// Size and SHA-256 of the whole archive (all volumes concatenated).
    pub archive: ArchiveDigest,
    /// Entry counters and problems.
    pub counts: PackCounts,
    /// File content bytes read from the sources.
    pub bytes_read: u64,
    /// Durations of the run.
    pub timings: Timings,
}

/// Compression settings of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Compression {
    /// Always `"zstd"` for format 1.
    pub algorithm: String,
    /// zstd level.
    pub level: i32,
    /// Whether long-distance matching was on (restore needs a 128 MiB window).
    pub long_distance: bool,
}

/// Encryption settings of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Encryption {
    /// Always `"age"` for format 1.
    pub scheme: String,
    /// The public keys it was encrypted to (empty with a passphrase).
    pub recipients: Vec<String>,
    /// True when encrypted with a passphrase instead.
    pub passphrase: bool,
}

/// One volume of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Remote file name (chosen by the remote layout).
    pub name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex MD5.
    pub md5: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// Size and digest of the whole archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveDigest {
    /// Total size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of all volumes concatenated.
    pub sha256: String,
}

/// Durations of a backup run, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Walking, compressing and (when streamed) uploading.
    pub pack_ms: u64,
    /// The whole run, when the caller knows it.
    pub total_ms: Option<u64>,
}

/// The caller's part of a manifest (what the archive layer cannot know).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SnapshotMeta {
    /// Snapshot id.
    pub snapshot: String,
    /// Job name.
    pub job: String,
    /// Start time.
    pub created: DateTime<Utc>,
    /// Host name.
    pub host: String,
    /// Remote names of the volumes, in order (one per packed volume).
    pub volume_names: Vec<String>,
}

impl SnapshotMeta {
    /// Everything the caller has to provide.
    pub fn new(
        snapshot: impl Into<String>,
        job: impl Into<String>,
        created: DateTime<Utc>,
        host: impl Into<String>,
        volume_names: Vec<String>,
    ) -> Self {
        Self {
            snapshot: snapshot.into(),
            job: job.into(),
            created,
            host: host.into(),
            volume_names,
        }
    }
}

impl Manifest {
    /// Builds the manifest of a finished pack.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the number of volume names differs from the
    /// number of packed volumes.
    pub fn from_pack(
        meta: SnapshotMeta,
        opts: &PackOptions,
        summary: &PackSummary,
    ) -> Result<Self> {
        if meta.volume_names.len() != summary.volumes.len() {
            return Err(Error::Invalid {
                field: "volume_names",
                reason: format!(
                    "{} names for {} volumes",
                    meta.volume_names.len(),
                    summary.volumes.len()
                ),
            });
        }
        let volumes = meta
            .volume_names
            .into_iter()
            .zip(&summary.volumes)
            .map(|(name, v)| VolumeRecord {
                name,
                size: v.size,
                md5: v.md5.clone(),
                sha256: v.sha256.clone(),
            })
            .collect();
        let encrypted = !opts.recipients.is_empty() || opts.passphrase.is_some();
        Ok(Self {
            format: MANIFEST_FORMAT,
            snapshot: meta.snapshot,
            job: meta.job,
            created: meta.created,
            host: meta.host,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            sources: summary.sources.clone(),
            excludes: opts.excludes.clone(),
            exclude_if_present: opts.exclude_if_present.clone(),
            one_file_system: opts.one_file_system,
            compression: Compression {
                algorithm: "zstd".to_owned(),
                level: opts.level,
                long_distance: opts.long_distance,
            },
            encryption: encrypted.then(|| Encryption {
                scheme: "age".to_owned(),
                recipients: opts.recipients.clone(),
                passphrase: opts.passphrase.is_some(),
            }),
            volumes,
            archive: ArchiveDigest {
                size: summary.bytes_out,
                sha256: summary.sha256.clone(),
            },
            counts: summary.counts.clone(),
            bytes_read: summary.bytes_read,
            timings: Timings {
                pack_ms: duration_ms(summary.duration),
                total_ms: None,
            },
        })
    }

    /// Pretty JSON, ending with a newline.
    ///
    /// # Errors
    /// [`Error::Manifest`] (serialisation does not fail in practice).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|source| Error::Manifest { source })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses a manifest, refusing formats newer than [`MANIFEST_FORMAT`].
    ///
    /// # Errors
    /// [`Error::ManifestVersion`] for a newer format (checked first, so the
    /// message is right even when the rest no longer parses),
    /// [`Error::Manifest`] for invalid JSON or missing fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Probe {
            format: u64,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| Error::Manifest { source })?;
        if probe.format > u64::from(MANIFEST_FORMAT) || probe.format == 0 {
            return Err(Error::ManifestVersion {
                found: probe.format,
                supported: MANIFEST_FORMAT,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| Error::Manifest { source })
    }

    /// The remote names of the volumes, in order (what to download).
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.volumes.iter().map(|v| v.name.as_str())
    }

    /// The local source root archived under `prefix`.
    pub fn source_of(&self, prefix: &str) -> Option<&PathBuf> {
        self.sources
            .iter()
            .find(|s| s.prefix == prefix)
            .map(|s| &s.path)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3339 text for timestamps (chrono's serde feature is not enabled).
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::VolumeInfo;
    use chrono::TimeZone;

    fn sample() -> Manifest {
        let opts = PackOptions {
            excludes: vec!["*.tmp".into()],
            ..PackOptions::new(["/etc"])
        };
        let summary = PackSummary {
            volumes: vec![VolumeInfo {
                index: 1,
                size: 10,
                md5: "m".into(),
                sha256: "s".into(),
                last: true,
            }],
            sha256: "s".into(),
            bytes_out: 10,
            bytes_read: 20,
            counts: PackCounts::default(),
            sources: vec![SourcePrefix {
                prefix: "etc".into(),
                path: "/etc".into(),
            }],
            issues: vec![],
            duration: Duration::from_millis(1500),
        };
        let created = Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap();
        let meta = SnapshotMeta::new(
            "job-20261123T020000Z",
            "job",
            created,
            "pi",
            vec!["a.tar.zst".into()],
        );
        Manifest::from_pack(meta, &opts, &summary).unwrap()
    }

    #[test]
    fn json_round_trips_and_is_stable() {
        let m = sample();
        let json = m.to_json().unwrap();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains(r#""format": 1"#), "{text}");
        assert!(
            text.contains(r#""created": "2026-11-23T02:00:00Z""#),
            "{text}"
        );
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert_eq!(m.source_of("etc").unwrap(), &PathBuf::from("/etc"));
    }

    #[test]
    fn newer_format_is_refused_clearly() {
        let err = Manifest::from_json(br#"{"format": 7, "whatever": true}"#).unwrap_err();
        assert!(matches!(
            err,
            Error::ManifestVersion {
                found: 7,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("upgrade"), "{err}");
    }

    #[test]
    fn unknown_fields_of_the_same_format_are_ignored() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
        v["added_later"] = serde_json::json!(1);
        assert!(Manifest::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
    }

    #[test]
    fn volume_names_must_match_volumes() {
        let m = sample();
        let meta = SnapshotMeta::new("x", "j", m.created, "h", vec![]);
        let summary = PackSummary {
            volumes: vec![],
            sha256: String::new(),
            bytes_out: 0,
            bytes_read: 0,
            counts: PackCounts::default(),
            sources: vec![],
            issues: vec![],
            duration: Duration::ZERO,
        };
        assert!(
            Manifest::from_pack(meta, &PackOptions::default(), &{
                let mut s = summary;
                s.volumes.push(VolumeInfo {
                    index: 1,
                    size: 0,
                    md5: String::new(),
                    sha256: String::new(),
                    last: true,
                });
                s
            })
            .is_err()
        );
    }
}

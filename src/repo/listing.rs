//! Making sense of a job folder listing: complete snapshots, orphans,
//! partial uploads, the lock and foreign files; and the cleanup plan that
//! follows from it.
//!
//! A snapshot is complete when its manifest exists (the manifest is written
//! last). Archives without a manifest are *orphans* (a run died between the
//! last rename and the manifest); `*.partial` files are uploads that were
//! never verified. Files we did not name are *foreign* and never touched.
//!
//! Pure functions over [`RemoteEntry`] values; no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use chrono_tz::Tz;

use super::layout::{Encryption, FileKind, JobName, SnapshotId, parse_name};
use super::target::{self, RemoteEntry, Target, TargetExt};
use crate::retention::{self, Candidate, Decision, Policy};

/// One archive file (single volume or one volume) of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArchiveFile {
    /// The listing entry.
    pub entry: RemoteEntry,
    /// Plain or age-encrypted.
    pub encryption: Encryption,
    /// `None` for a single-volume archive, else the 1-based volume number.
    pub volume: Option<u32>,
}

/// The files of one snapshot id found in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotFiles {
    /// The snapshot id.
    pub id: SnapshotId,
    /// The manifest, when present (then the snapshot is complete).
    pub manifest: Option<RemoteEntry>,
    /// Archive files, single archive first, then volumes in order.
    pub archives: Vec<ArchiveFile>,
}

impl SnapshotFiles {
    fn new(id: SnapshotId) -> Self {
        Self {
            id,
            manifest: None,
            archives: Vec::new(),
        }
    }

    /// True when the manifest exists.
    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }

    /// Total size of the archive files in bytes.
    pub fn archive_size(&self) -> u64 {
        self.archives.iter().map(|a| a.entry.size).sum()
    }

    /// The newest modification time of any of its files.
    pub fn last_modified(&self) -> Option<DateTime<Utc>> {
        self.manifest
            .iter()
            .chain(self.archives.iter().map(|a| &a.entry))
            .filter_map(|e| e.mtime)
            .max()
    }

    /// Every file name, in the order to delete them: the manifest first, so
    /// that an interrupted deletion leaves an orphan (cleaned up later),
    /// never a manifest that points at missing volumes.
    pub fn deletion_order(&self) -> Vec<String> {
        self.manifest
            .iter()
            .map(|m| m.name.clone())
            .chain(self.archives.iter().map(|a| a.entry.name.clone()))
            .collect()
    }

    /// Problems visible from names alone: no archive, both a single archive
    /// and volumes, gaps in the volume numbers, mixed encryption.
    pub fn name_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.archives.is_empty() {
            problems.push("no archive file".to_owned());
        }
        let single = self.archives.iter().any(|a| a.volume.is_none());
        let volumes: Vec<u32> = self.archives.iter().filter_map(|a| a.volume).collect();
        if single && !volumes.is_empty() {
            problems.push("both a single archive and volumes".to_owned());
        }
        if let Some(gap) = (1u32..).zip(&volumes).find(|(want, got)| want != *got) {
            problems.push(format!("volume {:03} is missing", gap.0));
        }
        let encrypted = self
            .archives
            .iter()
            .filter(|a| a.encryption == Encryption::Age)
            .count();
        if encrypted != 0 && encrypted != self.archives.len() {
            problems.push("plain and encrypted archive files mixed".to_owned());
        }
        problems
    }
}

impl From<&SnapshotFiles> for Candidate {
    fn from(s: &SnapshotFiles) -> Self {
        Candidate::new(s.id.to_string(), s.id.time())
    }
}

/// An upload that was never verified and renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartialFile {
    /// The listing entry (`<name>.partial`).
    pub entry: RemoteEntry,
    /// The snapshot it was for.
    pub id: SnapshotId,
    /// The name it would have been renamed to.
    pub final_name: String,
}

impl PartialFile {
    /// How old the partial is at `now`: from its modification time, or the
    /// snapshot's start time when the target reports none.
    pub fn age(&self, now: DateTime<Utc>) -> TimeDelta {
        now - self.entry.mtime.unwrap_or(self.id.time())
    }
}

/// A job folder listing, classified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// Complete snapshots (manifest present), oldest first.
    pub snapshots: Vec<SnapshotFiles>,
    /// Archive files without a manifest, oldest first.
    pub orphans: Vec<SnapshotFiles>,
    /// Uploads never verified, sorted by name.
    pub partials: Vec<PartialFile>,
    /// The lock file, when present.
    pub lock: Option<RemoteEntry>,
    /// Everything else (including sub-folders and other jobs' files),
    /// sorted by name. Never touched.
    pub foreign: Vec<RemoteEntry>,
}

impl Listing {
    /// Classifies the entries of the folder of `job`.
    pub fn classify(job: &JobName, entries: impl IntoIterator<Item = RemoteEntry>) -> Self {
        let mut listing = Listing::default();
        let mut by_id: BTreeMap<SnapshotId, SnapshotFiles> = BTreeMap::new();
        for entry in entries {
            let kind = match entry.is_dir {
                true => None,
                false => parse_name(job, &entry.name),
            };
            match kind {
                None => listing.foreign.push(entry),
                Some(FileKind::Lock) => listing.lock = Some(entry),
                Some(FileKind::Manifest { id }) => {
                    by_id
                        .entry(id.clone())
                        .or_insert_with(|| SnapshotFiles::new(id))
                        .manifest = Some(entry);
                }
                Some(FileKind::Archive {
                    id,
                    encryption,
                    volume,
                }) => by_id
                    .entry(id.clone())
                    .or_insert_with(|| SnapshotFiles::new(id))
                    .archives
                    .push(ArchiveFile {
                        entry,
                        encryption,
                        volume,
                    }),
                Some(FileKind::Partial { of, final_name }) => {
                    if let Some(id) = of.snapshot_id().cloned() {
                        listing.partials.push(PartialFile {
                            entry,
                            id,
                            final_name,
                        });
                    }
                }
            }
        }
        for (_, mut files) in by_id {
            files
                .archives
                .sort_by_key(|a| (a.volume, a.encryption == Encryption::Age));
            match files.is_complete() {
                true => listing.snapshots.push(files),
                false => listing.orphans.push(files),
            }
        }
        listing
            .partials
            .sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        listing.foreign.sort_by(|a, b| a.name.cmp(&b.name));
        listing
    }

    /// Lists the job folder behind `target` and classifies it; a folder
    /// that does not exist yet gives an empty listing.
    ///
    /// # Errors
    /// The target's error when listing fails.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    pub async fn load(target: &dyn Target, job: &JobName) -> Result<Self, target::Error> {
        Ok(Self::classify(job, target.list_or_empty().await?))
    }

    /// The newest complete snapshot.
    pub fn latest(&self) -> Option<&SnapshotFiles> {
        self.snapshots.last()
    }

    /// The complete snapshot with this id.
    pub fn find(&self, id: &SnapshotId) -> Option<&SnapshotFiles> {
        self.snapshots.iter().find(|s| &s.id == id)
    }

    /// The newest complete snapshot started strictly before `time`.
    pub fn latest_before(&self, time: DateTime<Utc>) -> Option<&SnapshotFiles> {
        self.snapshots.iter().rev().find(|s| s.id.time() < time)
    }

    /// The complete snapshots as retention candidates.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.snapshots.iter().map(Candidate::from).collect()
    }
}

/// What `forget` would do: a decision per complete snapshot and the files
/// to delete for the forgotten ones.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForgetPlan {
    /// One decision per complete snapshot, newest first.
    pub decisions: Vec<Decision>,
    /// Files to delete, snapshot by snapshot (oldest first), each
    /// snapshot's manifest before its archives.
    pub delete: Vec<String>,
}

/// Applies `policy` to the complete snapshots of `listing` (see
/// [`retention::apply`]). Orphans, partials and foreign files are never
/// part of the plan; the newest complete snapshot is always kept. Call it
/// only after a successful run.
pub fn plan_forget(listing: &Listing, policy: &Policy, now: DateTime<Utc>, tz: Tz) -> ForgetPlan {
    let decisions = retention::apply(&listing.candidates(), policy, now, tz);
    let delete = listing
        .snapshots
        .iter()
        .filter(|s| {
            let id = s.id.to_string();
            decisions.iter().any(|d| !d.keep && d.id == id)
        })
        .flat_map(SnapshotFiles::deletion_order)
        .collect();
    ForgetPlan { decisions, delete }
}

/// Deletes `names` from the job folder of `job`, in order, after checking
/// that each is a name synback gives (a snapshot file, partial or lock):
/// the last guard against deleting a file we did not write. Files already
/// gone are skipped. Returns how many files were deleted.
///
/// # Errors
/// [`target::Error::InvalidName`] for a foreign name (nothing after it is
/// deleted); the target's error when a delete fails.
///
/// # Cancel safety
/// Dropping the future stops between files; every file is either deleted
/// or intact.
pub async fn delete_ours(
    target: &dyn Target,
    job: &JobName,
    names: &[String],
) -> Result<usize, target::Error> {
    let mut deleted = 0;
    for name in names {
        if parse_name(job, name).is_none() {
            return Err(target::Error::InvalidName {
                name: name.clone(),
                reason: "not a file synback names; refusing to delete it",
            });
        }
        if target.delete_if_exists(name).await? {
            deleted += 1;
            tracing::debug!(target = %target, file = %name, "deleted");
        }
    }
    Ok(deleted)
}

/// How old leftovers must be before [`plan_cleanup_with`] removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupOptions {
    /// Minimum age of a `*.partial` file.
    pub partial_age: TimeDelta,
    /// Minimum age of an orphan (archives without manifest); `None` keeps
    /// orphans.
    pub orphan_age: Option<TimeDelta>,
}

impl Default for CleanupOptions {
    /// One day for both, as the design asks for partials.
    fn default() -> Self {
        Self {
            partial_age: TimeDelta::days(1),
            orphan_age: Some(TimeDelta::days(1)),
        }
    }
}

/// One file the cleanup will delete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupItem {
    /// The file name in the job folder (always one of our names).
    pub name: String,
    /// Why it goes, for logs and `--dry-run` output.
    pub reason: String,
}

/// Stale partials and orphans older than a day, to delete. See
/// [`plan_cleanup_with`].
pub fn plan_cleanup(listing: &Listing, now: DateTime<Utc>) -> Vec<CleanupItem> {
    plan_cleanup_with(listing, now, &CleanupOptions::default())
}

/// Leftovers to delete: partials older than `opts.partial_age` and orphan
/// archives whose newest file is older than `opts.orphan_age`. Only names
/// classified as ours are ever returned; foreign files and complete
/// snapshots never are. Run it while holding the lock, so that the uploads
/// of a live writer are not taken for leftovers.
pub fn plan_cleanup_with(
    listing: &Listing,
    now: DateTime<Utc>,
    opts: &CleanupOptions,
) -> Vec<CleanupItem> {
    let mut plan: Vec<CleanupItem> = listing
        .partials
        .iter()
        .filter(|p| p.age(now) >= opts.partial_age)
        .map(|p| CleanupItem {
            name: p.entry.name.clone(),
            reason: format!("unfinished upload, {} old", format_age(p.age(now))),
        })
        .collect();
    if let Some(min_age) = opts.orphan_age {
        for orphan in &listing.orphans {
            let age = now - orphan.last_modified().unwrap_or(orphan.id.time());
            if age >= min_age {
                plan.extend(orphan.deletion_order().into_iter().map(|name| CleanupItem {
                    name,
                    reason: format!(
                        "orphan of snapshot {} (no manifest), {} old",
                        orphan.id,
                        format_age(age)
                    ),
                }));
            }
        }
    }
    plan
}

/// `3d 4h`, `5h 2m`, `12m`: a coarse human age.
fn format_age(age: TimeDelta) -> String {
    let minutes = age.num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{mins}m"),
        (0, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> JobName {
        JobName::new("pc").unwrap()
    }

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap()
    }

    fn entry(name: &str, size: u64, mtime: DateTime<Utc>) -> RemoteEntry {
        RemoteEntry::file(name, size).with_mtime(mtime)
    }

    fn sample() -> Vec<RemoteEntry> {
        vec![
            entry("pc-20260101T000000Z.tar.zst", 10, t(1, 0)),
            entry("pc-20260101T000000Z.manifest.json", 1, t(1, 0)),
            entry("pc-20260102T000000Z.tar.zst.002", 5, t(2, 0)),
            entry("pc-20260102T000000Z.tar.zst.001", 5, t(2, 0)),
            entry("pc-20260102T000000Z.manifest.json", 1, t(2, 0)),
            entry("pc-20260103T000000Z.tar.zst.001", 5, t(3, 0)),
            entry("pc-20260104T000000Z.tar.zst.001.partial", 5, t(4, 0)),
            entry("pc-20260105T000000Z.manifest.json.partial", 5, t(5, 0)),
            entry(".lock", 100, t(5, 0)),
            entry("README.txt", 3, t(1, 0)),
            entry("other-20260101T000000Z.tar.zst", 3, t(1, 0)),
            RemoteEntry::dir("pc-20260101T000000Z.tar.zst.003"),
        ]
    }

    #[test]
    fn classify_sorts_everything_into_its_place() {
        let listing = Listing::classify(&job(), sample());
        let ids: Vec<String> = listing.snapshots.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(ids, ["pc-20260101T000000Z", "pc-20260102T000000Z"]);
        let volumes: Vec<Option<u32>> = listing.snapshots[1]
            .archives
            .iter()
            .map(|a| a.volume)
            .collect();
        assert_eq!(volumes, [Some(1), Some(2)]);
        assert_eq!(listing.snapshots[1].archive_size(), 10);
        assert_eq!(listing.orphans.len(), 1);
        assert_eq!(listing.partials.len(), 2);
        assert!(listing.lock.is_some());
        let foreign: Vec<&str> = listing.foreign.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            foreign,
            [
                "README.txt",
                "other-20260101T000000Z.tar.zst",
                "pc-20260101T000000Z.tar.zst.003"
            ]
        );
        assert_eq!(
            listing.latest().unwrap().id.to_string(),
            "pc-20260102T000000Z"
        );
    }

    #[test]
    fn manifest_is_deleted_first() {
        let listing = Listing::classify(&job(), sample());
        let order = listing.snapshots[1].deletion_order();
        assert_eq!(order[0], "pc-20260102T000000Z.manifest.json");
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn name_problems_are_found() {
        let listing = Listing::classify(
            &job(),
            vec![
                entry("pc-20260101T000000Z.manifest.json", 1, t(1, 0)),
                entry("pc-20260101T000000Z.tar.zst.001", 1, t(1, 0)),
                entry("pc-20260101T000000Z.tar.zst.003", 1, t(1, 0)),
                entry("pc-20260102T000000Z.manifest.json", 1, t(1, 0)),
            ],
        );
        assert_eq!(
            listing.snapshots[0].name_problems(),
            ["volume 002 is missing"]
        );
        assert_eq!(listing.snapshots[1].name_problems(), ["no archive file"]);
    }

    #[test]
    fn cleanup_takes_only_old_leftovers() {
        let listing = Listing::classify(&job(), sample());
        let plan = plan_cleanup(&listing, t(5, 12));
        let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pc-20260104T000000Z.tar.zst.001.partial",
                "pc-20260103T000000Z.tar.zst.001"
            ]
        );
        assert!(plan[0].reason.contains("1d 12h"), "{}", plan[0].reason);
        let keep_orphans = CleanupOptions {
            orphan_age: None,
            ..CleanupOptions::default()
        };
        assert_eq!(
            plan_cleanup_with(&listing, t(5, 12), &keep_orphans).len(),
            1
        );
    }

    #[test]
    fn partial_age_falls_back_to_the_snapshot_time() {
        let listing = Listing::classify(
            &job(),
            vec![RemoteEntry::file("pc-20260101T000000Z.tar.zst.partial", 1)],
        );
        assert_eq!(listing.partials[0].age(t(2, 6)), TimeDelta::hours(30));
        assert_eq!(plan_cleanup(&listing, t(1, 23)).len(), 0);
        assert_eq!(plan_cleanup(&listing, t(2, 0)).len(), 1);
    }

    #[test]
    fn forget_plan_deletes_manifests_first_and_keeps_the_rest() {
        let listing = Listing::classify(&job(), sample());
        let plan = plan_forget(
            &listing,
            &Policy::default().last(1),
            t(9, 0),
            chrono_tz::UTC,
        );
        assert_eq!(plan.decisions.len(), 2);
        assert_eq!(
            plan.delete,
            [
                "pc-20260101T000000Z.manifest.json",
                "pc-20260101T000000Z.tar.zst"
            ]
        );
        let keep_all = plan_forget(&listing, &Policy::default(), t(9, 0), chrono_tz::UTC);
        assert!(keep_all.delete.is_empty());
    }

    #[tokio::test]
    async fn delete_ours_refuses_foreign_names() {
        let target = crate::repo::MemoryTarget::with_folder();
        for e in sample() {
            target.insert(&e.name, &b"x"[..], t(1, 0));
        }
        let names = vec![
            "pc-20260101T000000Z.manifest.json".to_owned(),
            "pc-20260109T000000Z.manifest.json".to_owned(),
            "README.txt".to_owned(),
            "pc-20260101T000000Z.tar.zst".to_owned(),
        ];
        let err = delete_ours(&target, &job(), &names).await.unwrap_err();
        assert!(err.to_string().contains("README.txt"), "{err}");
        assert!(target.contents("README.txt").is_some());
        assert!(
            target
                .contents("pc-20260101T000000Z.manifest.json")
                .is_none()
        );
        assert!(target.contents("pc-20260101T000000Z.tar.zst").is_some());
        let done = delete_ours(&target, &job(), &names[3..]).await.unwrap();
        assert_eq!(done, 1);
    }

    #[tokio::test]
    async fn load_treats_a_missing_folder_as_empty() {
        let target = crate::repo::MemoryTarget::new();
        assert_eq!(
            Listing::load(&target, &job()).await.unwrap(),
            Listing::default()
        );
    }

    #[test]
    fn hundreds_of_snapshots() {
        let base = t(1, 0);
        let entries: Vec<RemoteEntry> = (0..500)
            .flat_map(|i| {
                let id = SnapshotId::new(job(), base + TimeDelta::hours(i));
                [
                    entry(&id.archive_name(Encryption::Plain), 1, base),
                    entry(&id.manifest_name(), 1, base),
                ]
            })
            .rev()
            .collect();
        let listing = Listing::classify(&job(), entries);
        assert_eq!(listing.snapshots.len(), 500);
        assert!(listing.snapshots.windows(2).all(|w| w[0].id < w[1].id));
        assert!(listing.foreign.is_empty() && listing.orphans.is_empty());
        assert_eq!(listing.candidates().len(), 500);
    }
}

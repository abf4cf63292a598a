//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus. Not a public API: it exists only with the
//! non-default `fuzzing` feature.
//!
//! Every function takes arbitrary bytes, must never panic, and returns
//! `Err` with a description when an invariant breaks (the fuzz target then
//! aborts). Bad input itself is fine: it only has to be refused cleanly.

use std::io::Write;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::archive::{self, DecryptKey, ListOptions, Manifest, UnpackOptions};
use crate::config::{Config, ConfigEnv};
use crate::secret::Secret;

pub use crate::dsm::fuzz::reply as dsm_reply;
pub use crate::emulator::fuzz::{BOUNDARY, UploadHarness};

/// The public half of [`FUZZ_IDENTITY`], for building encrypted seeds.
pub const FUZZ_RECIPIENT: &str = "age1re3vj6tlat587mf5yygx9qlkmvffeydxzt3wff09m9ycmnpmc38scf9p3g";
/// A throwaway age key used only by the fuzz harness (it protects nothing).
pub const FUZZ_IDENTITY: &str =
    "AGE-SECRET-KEY-1H2GNHJTV6RLHR0LCZ34RF0EQQLEM7AHXP68NKAMSD83SQ5XZGP3QKUX7DE";
/// Archives that would expand beyond this are listed but not unpacked, so
/// a fuzz run cannot fill the disk.
const MAX_UNPACK_BYTES: u64 = 64 << 20;

/// Parses a manifest; one that parses must survive a write/read round trip
/// unchanged.
///
/// # Errors
/// A description of a broken round trip.
pub fn manifest(data: &[u8]) -> Result<(), String> {
    let Ok(manifest) = Manifest::from_json(data) else {
        return Ok(());
    };
    let json = manifest
        .to_json()
        .map_err(|e| format!("a parsed manifest cannot be written: {e}"))?;
    let again = Manifest::from_json(&json)
        .map_err(|e| format!("a written manifest cannot be read: {e}"))?;
    if again != manifest {
        return Err("manifest changed in a write/read round trip".into());
    }
    let _ = manifest.volume_names().count();
    Ok(())
}

/// Parses and validates config text (lossy UTF-8) with an empty
/// environment; errors must render with a message.
///
/// # Errors
/// A description of an error without a message.
pub fn config(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml_str(&text, "fuzz.toml", &ConfigEnv::new()) {
        Ok(_) => Ok(()),
        Err(err) => {
            if crate::error_chain(&err).is_empty() {
                return Err("config error without a message".into());
            }
            Ok(())
        }
    }
}

/// Lists and unpacks `data` as a snapshot stream into a temporary target
/// nested three folders deep that holds a planted symlink to a folder
/// outside; nothing may appear outside the target (anywhere under the
/// temporary base, through the symlink, or at [`ESCAPE_CANARY`] in the
/// system temp folder). Overwrite is on for inputs of odd length.
///
/// # Errors
/// A description of a broken safety rule.
pub fn archive(data: &[u8]) -> Result<(), String> {
    unpack_checked(data, &[])
}

/// As [`archive`], with [`FUZZ_IDENTITY`] as the key. `data[0]` even: the
/// rest is fed as is (an age stream, or not); odd: the rest is first
/// encrypted to [`FUZZ_RECIPIENT`], so the fuzzer mutates the zstd and tar
/// layers under a valid age layer.
///
/// # Errors
/// As [`archive`].
pub fn archive_age(data: &[u8]) -> Result<(), String> {
    let keys = [DecryptKey::Identities(Secret::new(FUZZ_IDENTITY))];
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => unpack_checked(&encrypt(rest)?, &keys),
        Some((_, rest)) => unpack_checked(rest, &keys),
        None => unpack_checked(&[], &keys),
    }
}

/// `data` encrypted to [`FUZZ_RECIPIENT`].
///
/// # Errors
/// When age refuses (never for a valid recipient).
pub fn encrypt(data: &[u8]) -> Result<Vec<u8>, String> {
    let recipient = archive::parse_recipient(FUZZ_RECIPIENT).map_err(|e| e.to_string())?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out).map_err(|e| e.to_string())?;
    writer.write_all(data).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The file name hostile seeds aim at with absolute and `../` paths; the
/// archive harness fails when it appears in the system temp folder.
pub const ESCAPE_CANARY: &str = "synback-fuzz-evil";

/// Where the archive harness unpacks, under its temporary base: deep
/// enough that `../` paths land inside the base, where they are seen.
const NESTED: [&str; 3] = ["a", "b", "c"];

/// Damage done after unpacking, to prove that the archive harness's checks
/// fire (tests only; the fuzz targets pass [`Sabotage::None`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sabotage {
    /// Nothing.
    None,
    /// A file beside the target (as `../x` would write).
    Beside,
    /// A file three folders above the target (as `../../../x` would).
    FarAbove,
    /// A file in the folder the planted symlink points to.
    ThroughLink,
    /// The planted symlink replaced by a file.
    ReplaceLink,
    /// The canary in the system temp folder (as `/tmp/…` would).
    Canary,
}

/// [`archive`] with overwrite chosen by the caller and `sabotage` done
/// after the unpack, so tests can see the checks fail.
///
/// # Errors
/// As [`archive`].
pub fn archive_sabotaged(data: &[u8], overwrite: bool, sabotage: Sabotage) -> Result<(), String> {
    unpack_checked_with(data, &[], overwrite, sabotage)
}

/// Overwrite is on for inputs of odd length, so the fuzzer explores both
/// modes.
fn unpack_checked(data: &[u8], keys: &[DecryptKey]) -> Result<(), String> {
    unpack_checked_with(data, keys, data.len() % 2 == 1, Sabotage::None)
}

/// Lists `data`, then unpacks it into `<base>/a/b/c/target`, which holds
/// `planted -> <base>/outside`. Afterwards every path under the base
/// must be the target's or one of the fixed folders, `outside` must be
/// empty, without overwrite `planted` must still be the symlink, and the
/// canary must not have appeared in the system temp folder.
fn unpack_checked_with(
    data: &[u8],
    keys: &[DecryptKey],
    overwrite: bool,
    sabotage: Sabotage,
) -> Result<(), String> {
    let cancel = CancellationToken::new();
    let listed = ListOptions {
        keys: keys.to_vec(),
        ..ListOptions::default()
    };
    let mut expands_to = 0u64;
    let listing = archive::list(data, &listed, &cancel, &mut |entry| {
        expands_to = expands_to.saturating_add(entry.size);
    });
    if listing.is_ok() && expands_to > MAX_UNPACK_BYTES {
        return Ok(());
    }
    let canary = std::env::temp_dir().join(ESCAPE_CANARY);
    let canary_before = canary.symlink_metadata().is_ok();
    let base = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let outside = base.path().join("outside");
    let mut nest = base.path().to_path_buf();
    let mut nested = Vec::new();
    for dir in NESTED {
        nest.push(dir);
        nested.push(nest.clone());
    }
    let target = nest.join("target");
    for dir in [&outside, &target] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let planted = target.join("planted");
    std::os::unix::fs::symlink(&outside, &planted)
        .map_err(|e| format!("planting a symlink: {e}"))?;
    let mut opts = UnpackOptions::new(&target);
    opts.keys = keys.to_vec();
    opts.overwrite = overwrite;
    let unpacked = archive::unpack(data, &opts, &cancel);
    if let Err(err) = &unpacked
        && crate::error_chain(err).is_empty()
    {
        return Err("archive error without a message".into());
    }
    sabotage_tree(sabotage, &target, &outside, &canary)?;
    if !canary_before && canary.symlink_metadata().is_ok() {
        let _ = std::fs::remove_file(&canary);
        return Err(format!("unpack wrote {}", canary.display()));
    }
    if let Some(stray) = stray_path(base.path(), &target, &outside, &nested)? {
        return Err(format!(
            "unpack wrote outside its target: {}",
            stray.display()
        ));
    }
    if std::fs::read_dir(&outside)
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err("unpack wrote through a symlink planted in the target".into());
    }
    if !opts.overwrite && !is_symlink(&planted) && unpacked.is_ok() {
        // Overwrite is off: an existing name is kept, never replaced.
        return Err("unpack replaced an existing name without overwrite".into());
    }
    Ok(())
}

fn sabotage_tree(
    sabotage: Sabotage,
    target: &Path,
    outside: &Path,
    canary: &Path,
) -> Result<(), String> {
    let write = |path: &Path| std::fs::write(path, b"x").map_err(|e| e.to_string());
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    match sabotage {
        Sabotage::None => Ok(()),
        Sabotage::Beside => write(&parent.join("x")),
        Sabotage::FarAbove => match parent.ancestors().nth(2) {
            Some(far) => write(&far.join("x")),
            None => Ok(()),
        },
        Sabotage::ThroughLink => write(&outside.join("x")),
        Sabotage::ReplaceLink => {
            let planted = target.join("planted");
            std::fs::remove_file(&planted).map_err(|e| e.to_string())?;
            write(&planted)
        }
        Sabotage::Canary => write(canary),
    }
}

/// The first path under `base` that is not `target` or inside it, not
/// `outside` (whose content is checked apart), and not a `nested` folder.
fn stray_path(
    base: &Path,
    target: &Path,
    outside: &Path,
    nested: &[std::path::PathBuf],
) -> Result<Option<std::path::PathBuf>, String> {
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path == target || path == outside {
                continue;
            }
            if !nested.contains(&path) {
                return Ok(Some(path));
            }
            stack.push(path);
        }
    }
    Ok(None)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

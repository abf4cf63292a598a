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
/// that holds a planted symlink to a folder outside; nothing may appear
/// outside the target, through the symlink or otherwise.
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

fn unpack_checked(data: &[u8], keys: &[DecryptKey]) -> Result<(), String> {
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
    let base = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let outside = base.path().join("outside");
    let target = base.path().join("target");
    for dir in [&outside, &target] {
        std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::os::unix::fs::symlink(&outside, target.join("planted"))
        .map_err(|e| format!("planting a symlink: {e}"))?;
    let mut opts = UnpackOptions::new(&target);
    opts.keys = keys.to_vec();
    let unpacked = archive::unpack(data, &opts, &cancel);
    if let Err(err) = &unpacked
        && crate::error_chain(err).is_empty()
    {
        return Err("archive error without a message".into());
    }
    let mut names: Vec<_> = std::fs::read_dir(base.path())
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    if names != ["outside", "target"] {
        return Err(format!("unpack wrote beside its target: {names:?}"));
    }
    if std::fs::read_dir(&outside)
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err("unpack wrote through a symlink planted in the target".into());
    }
    if !is_symlink(&target.join("planted")) && unpacked.is_ok() {
        // Overwrite is off: an existing name is kept, never replaced.
        return Err("unpack replaced an existing name without overwrite".into());
    }
    Ok(())
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

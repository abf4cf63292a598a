//! Keeping the device id (`did`) DSM issues after an OTP login, so later
//! unattended logins skip OTP. The file holds the id alone and is created
//! with mode 0600; it is written to a temporary name and renamed, so a crash
//! never leaves half an id.

use std::io::{self, Write};
use std::path::Path;

use crate::secret::Secret;

/// Writes the device id to `path` (mode 0600 on Unix), replacing any old one.
///
/// # Errors
/// Any I/O error creating, writing or renaming the file.
pub fn save_device_id(path: &Path, device_id: &Secret) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".device-id")
        .tempfile_in(dir)?;
    // tempfile creates files with mode 0600 on Unix.
    temp.write_all(device_id.expose().as_bytes())?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads a device id saved by [`save_device_id`]; `None` when there is no file
/// or it is empty.
///
/// # Errors
/// Any I/O error other than "not found".
pub fn load_device_id(path: &Path) -> io::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            Ok((!id.is_empty()).then(|| Secret::new(id)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("device-id");
        assert!(load_device_id(&path).unwrap().is_none());
        save_device_id(&path, &Secret::new("did-123")).unwrap();
        save_device_id(&path, &Secret::new("did-456")).unwrap();
        assert_eq!(load_device_id(&path).unwrap().unwrap().expose(), "did-456");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

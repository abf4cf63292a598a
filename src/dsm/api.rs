//! API discovery: which DSM APIs synback uses, which versions it speaks, and
//! the choice made from the NAS's `SYNO.API.Info` reply.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use serde::Deserialize;

use super::error::{Error, Result};
use super::params::Format;

/// `SYNO.API.Info`, always at `query.cgi`.
pub(crate) const INFO: &str = "SYNO.API.Info";
/// `SYNO.API.Auth`.
pub(crate) const AUTH: &str = "SYNO.API.Auth";
/// `SYNO.FileStation.Info`.
pub(crate) const FS_INFO: &str = "SYNO.FileStation.Info";
/// `SYNO.FileStation.List`.
pub(crate) const LIST: &str = "SYNO.FileStation.List";
/// `SYNO.FileStation.CreateFolder`.
pub(crate) const CREATE_FOLDER: &str = "SYNO.FileStation.CreateFolder";
/// `SYNO.FileStation.CheckPermission`.
pub(crate) const CHECK_PERMISSION: &str = "SYNO.FileStation.CheckPermission";
/// `SYNO.FileStation.Upload`.
pub(crate) const UPLOAD: &str = "SYNO.FileStation.Upload";
/// `SYNO.FileStation.MD5`.
pub(crate) const MD5: &str = "SYNO.FileStation.MD5";
/// `SYNO.FileStation.Download`.
pub(crate) const DOWNLOAD: &str = "SYNO.FileStation.Download";
/// `SYNO.FileStation.Rename`.
pub(crate) const RENAME: &str = "SYNO.FileStation.Rename";
/// `SYNO.FileStation.Delete`.
pub(crate) const DELETE: &str = "SYNO.FileStation.Delete";
/// `SYNO.FileStation.DirSize`.
pub(crate) const DIR_SIZE: &str = "SYNO.FileStation.DirSize";

/// Every API synback uses and the versions it can speak.
///
/// Auth: v3 is DSM 6.0/6.1, v6 DSM 6.2, v7 DSM 7. Upload v3 (DSM 7) writes
/// `overwrite` as `overwrite`/`skip` instead of `true`/`false`.
pub(crate) const WANTED: &[(&str, RangeInclusive<u32>)] = &[
    (AUTH, 3..=7),
    (FS_INFO, 1..=2),
    (LIST, 1..=2),
    (CREATE_FOLDER, 1..=2),
    (CHECK_PERMISSION, 1..=3),
    (UPLOAD, 2..=3),
    (MD5, 1..=2),
    (DOWNLOAD, 1..=2),
    (RENAME, 1..=2),
    (DELETE, 1..=2),
    (DIR_SIZE, 1..=2),
];

/// Where and how to call one API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The API name.
    pub api: &'static str,
    /// The CGI path under `/webapi/`, e.g. `entry.cgi`.
    pub path: String,
    /// The version chosen.
    pub version: u32,
    /// How parameter values are encoded.
    pub format: Format,
}

/// One entry of the `SYNO.API.Info` reply.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InfoEntry {
    path: String,
    #[serde(rename = "minVersion")]
    min_version: u32,
    #[serde(rename = "maxVersion")]
    max_version: u32,
    #[serde(rename = "requestFormat", default)]
    request_format: Option<String>,
}

/// The endpoints chosen for this NAS, or why an API cannot be used.
#[derive(Debug, Clone, Default)]
pub struct ApiTable {
    chosen: HashMap<&'static str, std::result::Result<Endpoint, String>>,
}

impl ApiTable {
    /// Chooses, for each wanted API, the highest version both sides support.
    pub(crate) fn choose(offered: &HashMap<String, InfoEntry>) -> Self {
        let chosen = WANTED
            .iter()
            .map(|(api, ours)| (*api, choose_one(api, ours, offered.get(*api))))
            .collect();
        Self { chosen }
    }

    /// The endpoint for an API.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the NAS lacks the API or no version fits.
    pub fn get(&self, api: &str) -> Result<&Endpoint> {
        match self.chosen.get(api) {
            Some(Ok(endpoint)) => Ok(endpoint),
            Some(Err(detail)) => Err(Error::Unsupported {
                api: api.to_owned(),
                detail: detail.clone(),
            }),
            None => Err(Error::Unsupported {
                api: api.to_owned(),
                detail: "(not used by synback)".into(),
            }),
        }
    }

    /// The chosen `(api, version)` pairs, sorted by name, for diagnostics.
    pub fn versions(&self) -> Vec<(&'static str, u32)> {
        let mut out: Vec<_> = self
            .chosen
            .iter()
            .filter_map(|(api, e)| e.as_ref().ok().map(|e| (*api, e.version)))
            .collect();
        out.sort_unstable();
        out
    }
}

fn choose_one(
    api: &'static str,
    ours: &RangeInclusive<u32>,
    theirs: Option<&InfoEntry>,
) -> std::result::Result<Endpoint, String> {
    let Some(theirs) = theirs else {
        return Err("(the API is not offered by this DSM)".to_owned());
    };
    let high = theirs.max_version.min(*ours.end());
    let low = theirs.min_version.max(*ours.start());
    if high < low {
        return Err(format!(
            "in a version synback speaks (synback {}-{}, NAS {}-{})",
            ours.start(),
            ours.end(),
            theirs.min_version,
            theirs.max_version
        ));
    }
    let json = theirs
        .request_format
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    Ok(Endpoint {
        api,
        path: theirs.path.trim_start_matches('/').to_owned(),
        version: high,
        format: if json { Format::Json } else { Format::Plain },
    })
}

/// A rough DSM generation from the Auth API version, for humans.
pub fn dsm_generation(auth_version: u32) -> &'static str {
    match auth_version {
        7.. => "DSM 7",
        6 => "DSM 6.2",
        4 | 5 => "DSM 6.0/6.1",
        _ => "DSM 6.0 or older",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSM7: &str = r#"{
        "SYNO.API.Auth": {"maxVersion": 7, "minVersion": 1, "path": "entry.cgi"},
        "SYNO.FileStation.List": {"maxVersion": 2, "minVersion": 1, "path": "entry.cgi", "requestFormat": "JSON"},
        "SYNO.FileStation.Upload": {"maxVersion": 3, "minVersion": 1, "path": "entry.cgi"},
        "SYNO.FileStation.MD5": {"maxVersion": 9, "minVersion": 5, "path": "entry.cgi"}
    }"#;

    const DSM6: &str = r#"{
        "SYNO.API.Auth": {"maxVersion": 3, "minVersion": 1, "path": "auth.cgi"},
        "SYNO.FileStation.List": {"maxVersion": 2, "minVersion": 1, "path": "entry.cgi"},
        "SYNO.FileStation.Upload": {"maxVersion": 2, "minVersion": 1, "path": "entry.cgi"}
    }"#;

    fn table(json: &str) -> ApiTable {
        let offered: HashMap<String, InfoEntry> = serde_json::from_str(json).unwrap();
        ApiTable::choose(&offered)
    }

    #[test]
    fn picks_highest_common_version_and_format() {
        let t = table(DSM7);
        let auth = t.get(AUTH).unwrap();
        assert_eq!(
            (auth.version, auth.path.as_str(), auth.format),
            (7, "entry.cgi", Format::Plain)
        );
        let list = t.get(LIST).unwrap();
        assert_eq!((list.version, list.format), (2, Format::Json));
        assert_eq!(t.get(UPLOAD).unwrap().version, 3);
    }

    #[test]
    fn dsm6_uses_auth_v3_and_upload_v2() {
        let t = table(DSM6);
        let auth = t.get(AUTH).unwrap();
        assert_eq!((auth.version, auth.path.as_str()), (3, "auth.cgi"));
        assert_eq!(t.get(UPLOAD).unwrap().version, 2);
        assert_eq!(dsm_generation(3), "DSM 6.0 or older");
        assert_eq!(dsm_generation(7), "DSM 7");
    }

    #[test]
    fn missing_or_incompatible_apis_are_reported() {
        let t = table(DSM7);
        let err = t.get(MD5).unwrap_err().to_string();
        assert!(
            err.contains("SYNO.FileStation.MD5") && err.contains("NAS 5-9"),
            "{err}"
        );
        let err = t.get(DIR_SIZE).unwrap_err().to_string();
        assert!(err.contains("not offered"), "{err}");
        assert_eq!(t.versions(), vec![(AUTH, 7), (LIST, 2), (UPLOAD, 3)]);
    }
}

//! `SYNO.API.Info`: the table of APIs, as a DSM 7.2 NAS publishes it.
//!
//! Paths, versions and `requestFormat` follow what DSM 7.2 answers for the
//! APIs the emulator implements. Calls outside these ranges get 104.

use serde_json::{Map, Value, json};

/// One published API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiDesc {
    pub name: &'static str,
    pub path: &'static str,
    pub min: u32,
    pub max: u32,
    pub json_format: bool,
    pub methods: &'static [&'static str],
}

/// Every API the emulator serves.
pub(crate) const APIS: &[ApiDesc] = &[
    ApiDesc {
        name: "SYNO.API.Info",
        path: "query.cgi",
        min: 1,
        max: 1,
        json_format: false,
        methods: &["query"],
    },
    ApiDesc {
        name: "SYNO.API.Auth",
        path: "entry.cgi",
        min: 1,
        max: 7,
        json_format: false,
        methods: &["login", "logout"],
    },
    ApiDesc {
        name: "SYNO.DSM.Info",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: false,
        methods: &["getinfo"],
    },
    ApiDesc {
        name: "SYNO.FileStation.Info",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["get"],
    },
    ApiDesc {
        name: "SYNO.FileStation.List",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["list_share", "list", "getinfo"],
    },
    ApiDesc {
        name: "SYNO.FileStation.CreateFolder",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["create"],
    },
    ApiDesc {
        name: "SYNO.FileStation.CheckPermission",
        path: "entry.cgi",
        min: 1,
        max: 3,
        json_format: true,
        methods: &["write"],
    },
    ApiDesc {
        name: "SYNO.FileStation.Upload",
        path: "entry.cgi",
        min: 1,
        max: 3,
        json_format: false,
        methods: &["upload"],
    },
    ApiDesc {
        name: "SYNO.FileStation.Download",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: false,
        methods: &["download"],
    },
    ApiDesc {
        name: "SYNO.FileStation.MD5",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["start", "status", "stop"],
    },
    ApiDesc {
        name: "SYNO.FileStation.Rename",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["rename"],
    },
    ApiDesc {
        name: "SYNO.FileStation.Delete",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["delete", "start", "status", "stop"],
    },
    ApiDesc {
        name: "SYNO.FileStation.DirSize",
        path: "entry.cgi",
        min: 1,
        max: 2,
        json_format: true,
        methods: &["start", "status", "stop"],
    },
];

/// Looks an API up by name.
pub(crate) fn find(name: &str) -> Option<&'static ApiDesc> {
    APIS.iter().find(|a| a.name == name)
}

/// True when `cgi` may serve `api`: every API at its own path, and
/// `SYNO.API.Info` at `entry.cgi` too (DSM 7).
pub(crate) fn served_at(api: &ApiDesc, cgi: &str) -> bool {
    api.path == cgi || (api.name == "SYNO.API.Info" && cgi == "entry.cgi")
}

/// The `query` answer: `all`, no `query` at all, or a comma list of names,
/// where a name ending in `.` selects every API with that prefix.
pub(crate) fn query(selectors: Option<Vec<String>>) -> Value {
    let wanted = selectors.unwrap_or_else(|| vec!["all".to_owned()]);
    let mut out = Map::new();
    for api in APIS {
        let selected = wanted.iter().any(|w| {
            w == "all" || w == api.name || (w.ends_with('.') && api.name.starts_with(w.as_str()))
        });
        if selected {
            out.insert(api.name.to_owned(), describe(api));
        }
    }
    Value::Object(out)
}

fn describe(api: &ApiDesc) -> Value {
    let mut desc = json!({
        "maxVersion": api.max,
        "minVersion": api.min,
        "path": api.path,
    });
    if api.json_format {
        desc["requestFormat"] = json!("JSON");
    }
    desc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_selects_by_name_and_prefix() {
        let all = query(None);
        assert_eq!(all["SYNO.API.Auth"]["maxVersion"], 7);
        assert_eq!(all["SYNO.FileStation.List"]["requestFormat"], "JSON");
        assert!(
            all["SYNO.FileStation.Upload"]
                .get("requestFormat")
                .is_none()
        );
        let some = query(Some(vec![
            "SYNO.API.Auth".into(),
            "SYNO.FileStation.".into(),
        ]));
        let map = some.as_object().unwrap();
        assert!(map.contains_key("SYNO.API.Auth"));
        assert!(map.contains_key("SYNO.FileStation.MD5"));
        assert!(!map.contains_key("SYNO.API.Info"));
    }
}

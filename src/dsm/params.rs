//! Request parameters and how their values are written on the wire.
//!
//! DSM's `SYNO.API.Info` says per API whether values are JSON-encoded
//! (`requestFormat: "JSON"`). We follow it: for JSON APIs every value is a
//! JSON value (strings quoted, arrays as `["/a","/b"]`, booleans `true`);
//! for the others strings go as they are, booleans as `true`/`false` and
//! lists as `[a,b]` with `\` and `,` escaped. This is the one place where
//! values are escaped. `api`, `version`, `method` and `_sid` are never
//! encoded.

use std::fmt;

use crate::secret::Secret;

/// How an API wants its parameter values written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `requestFormat: "JSON"`: every value is JSON.
    Json,
    /// Plain values; lists in brackets with `,` and `\` escaped.
    Plain,
}

/// One parameter value.
#[derive(Clone)]
pub(crate) enum Value {
    /// A string.
    Str(String),
    /// A secret string (password, OTP, device id).
    Secret(Secret),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A list of strings (paths, names).
    List(Vec<String>),
}

impl Value {
    fn encode(&self, format: Format) -> String {
        match (self, format) {
            (Self::Str(s), Format::Json) => json_string(s),
            (Self::Str(s), Format::Plain) => s.clone(),
            (Self::Secret(s), Format::Json) => json_string(s.expose()),
            // Secrets (passwords) are never escaped in plain form.
            (Self::Secret(s), Format::Plain) => s.expose().to_owned(),
            (Self::Bool(b), _) => b.to_string(),
            (Self::Int(i), _) => i.to_string(),
            (Self::List(items), Format::Json) => {
                let quoted: Vec<String> = items.iter().map(|s| json_string(s)).collect();
                format!("[{}]", quoted.join(","))
            }
            (Self::List(items), Format::Plain) => {
                let escaped: Vec<String> = items.iter().map(|s| escape_plain(s)).collect();
                format!("[{}]", escaped.join(","))
            }
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn escape_plain(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,")
}

/// The parameters of one call, in order. `Debug` shows the names only.
#[derive(Clone, Default)]
pub(crate) struct Params(Vec<(&'static str, Value)>);

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Params {
    /// No parameters.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a string.
    pub(crate) fn str(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.0.push((key, Value::Str(value.into())));
        self
    }

    /// Adds a secret.
    pub(crate) fn secret(mut self, key: &'static str, value: &Secret) -> Self {
        self.0.push((key, Value::Secret(value.clone())));
        self
    }

    /// Adds a boolean.
    pub(crate) fn bool(mut self, key: &'static str, value: bool) -> Self {
        self.0.push((key, Value::Bool(value)));
        self
    }

    /// Adds an integer.
    pub(crate) fn int(mut self, key: &'static str, value: i64) -> Self {
        self.0.push((key, Value::Int(value)));
        self
    }

    /// Adds a list.
    pub(crate) fn list<I, S>(mut self, key: &'static str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.push((
            key,
            Value::List(values.into_iter().map(Into::into).collect()),
        ));
        self
    }

    /// The encoded `(name, value)` pairs. Holds raw secrets: send, never log.
    pub(crate) fn encode(&self, format: Format) -> Vec<(&'static str, String)> {
        self.0.iter().map(|(k, v)| (*k, v.encode(format))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_encoding_quotes_strings_and_lists() {
        let p = Params::new()
            .str("folder_path", "/backup/a \"b\"")
            .list("path", ["/backup/x,y", "/backup/z"])
            .bool("force_parent", true)
            .int("offset", 200);
        let enc = p.encode(Format::Json);
        assert_eq!(enc[0], ("folder_path", r#""/backup/a \"b\"""#.to_owned()));
        assert_eq!(
            enc[1],
            ("path", r#"["/backup/x,y","/backup/z"]"#.to_owned())
        );
        assert_eq!(enc[2], ("force_parent", "true".to_owned()));
        assert_eq!(enc[3], ("offset", "200".to_owned()));
    }

    #[test]
    fn plain_encoding_escapes_lists_only() {
        let p = Params::new()
            .str("path", "/backup/a,b")
            .list("path", [r"/backup/a,b", r"/backup/c\d"])
            .secret("passwd", &Secret::new(r"p,w\d"));
        let enc = p.encode(Format::Plain);
        assert_eq!(enc[0].1, "/backup/a,b");
        assert_eq!(enc[1].1, r"[/backup/a\,b,/backup/c\\d]");
        assert_eq!(enc[2].1, r"p,w\d");
    }

    #[test]
    fn debug_shows_names_only() {
        let p = Params::new()
            .secret("passwd", &Secret::new("hunter2"))
            .str("account", "bob");
        let text = format!("{p:?}");
        assert!(text.contains("passwd") && text.contains("account"));
        assert!(!text.contains("hunter2") && !text.contains("bob"));
    }
}

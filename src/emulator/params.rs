//! Request parameters: query string, form body and multipart text fields,
//! decoded the way DSM accepts them.
//!
//! Values may be plain (`/a/b`, `true`, `a,b` with `\,` escapes) or
//! JSON-encoded (`"/a/b"`, `["/a","/b"]`), whatever the API's
//! `requestFormat`; DSM 7 accepts both for the calls synback uses.

use std::collections::BTreeMap;

/// The parameters of one call. Later sources override earlier ones
/// (query string first, then the body).
#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    /// Adds the pairs of an `application/x-www-form-urlencoded` text.
    pub fn extend_urlencoded(&mut self, text: &str) {
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.insert(percent_decode(key), percent_decode(value));
        }
    }

    /// Sets one parameter.
    pub fn insert(&mut self, key: String, value: String) {
        self.map.insert(key, value);
    }

    /// The raw value, exactly as sent (used for passwords, never unescaped).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// All pairs, for the request log.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    /// A string value; a JSON string (`"…"`) is decoded.
    pub fn string(&self, key: &str) -> Option<String> {
        self.raw(key).map(decode_string)
    }

    /// A single-value parameter that may also come as a one-element JSON
    /// array (`["/a"]`); `None` when absent or when the array does not hold
    /// exactly one value.
    pub fn single(&self, key: &str) -> Option<String> {
        let raw = self.raw(key)?;
        if raw.trim_start().starts_with('[') {
            let mut items = decode_list(raw);
            return (items.len() == 1).then(|| items.remove(0));
        }
        Some(decode_string(raw))
    }

    /// A list value: a JSON array, a bracketed or bare comma list (with `\,`
    /// and `\\` escapes), or a single JSON string.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.raw(key).map(decode_list)
    }

    /// A boolean: `true`/`yes`/`1` or `false`/`no`/`0`, any case, JSON or not.
    /// `Some(Err(()))` when the value is something else.
    pub fn bool(&self, key: &str) -> Option<Result<bool, ()>> {
        self.string(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(true),
                "false" | "no" | "0" => Ok(false),
                _ => Err(()),
            })
    }

    /// A signed number. `Some(Err(()))` when it does not parse.
    pub fn i64(&self, key: &str) -> Option<Result<i64, ()>> {
        self.string(key).map(|v| v.trim().parse().map_err(|_| ()))
    }
}

fn decode_string(raw: &str) -> String {
    if raw.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(raw)
    {
        return s;
    }
    raw.to_owned()
}

fn decode_list(raw: &str) -> Vec<String> {
    let trimmed = raw.trim();
    if trimmed.starts_with('[') {
        if let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(trimmed) {
            return items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect();
        }
        if let Some(inner) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return split_escaped(inner);
        }
    }
    if trimmed.starts_with('"') {
        return vec![decode_string(trimmed)];
    }
    split_escaped(raw)
}

/// Splits a DSM comma list: `,` separates, `\,` is a comma, `\\` a backslash.
fn split_escaped(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '\\')) => current.push(next),
                Some(other) => {
                    current.push('\\');
                    current.push(other);
                }
                None => current.push('\\'),
            },
            ',' => items.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    items.push(current);
    items
}

/// Decodes `%XX` escapes and `+` (space) of a form-encoded component.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> Params {
        let mut p = Params::default();
        p.extend_urlencoded(text);
        p
    }

    #[test]
    fn decodes_plain_and_json_strings() {
        let p = params("a=%2Fbackup%2Fx+y&b=%22%2Fbackup%22&c=%25");
        assert_eq!(p.string("a").as_deref(), Some("/backup/x y"));
        assert_eq!(p.string("b").as_deref(), Some("/backup"));
        assert_eq!(p.string("c").as_deref(), Some("%"));
    }

    #[test]
    fn decodes_lists_in_every_form() {
        assert_eq!(decode_list(r#"["/a","/b,c"]"#), vec!["/a", "/b,c"]);
        assert_eq!(decode_list("[size,time]"), vec!["size", "time"]);
        assert_eq!(decode_list(r"/a\,b,/c"), vec!["/a,b", "/c"]);
        assert_eq!(decode_list(r#""/a,b""#), vec!["/a,b"]);
        assert_eq!(decode_list(""), Vec::<String>::new());
    }

    #[test]
    fn single_values_may_be_one_element_arrays() {
        let p = params("a=%5B%22%2Fx%2Cy%22%5D&b=%2Fx%2Cy&c=%5B%22a%22%2C%22b%22%5D");
        assert_eq!(p.single("a").as_deref(), Some("/x,y"));
        assert_eq!(p.single("b").as_deref(), Some("/x,y"));
        assert_eq!(p.single("c"), None);
    }

    #[test]
    fn booleans_accept_dsm_and_python_spellings() {
        let p = params("a=False&b=yes&c=%22true%22&d=maybe");
        assert_eq!(p.bool("a"), Some(Ok(false)));
        assert_eq!(p.bool("b"), Some(Ok(true)));
        assert_eq!(p.bool("c"), Some(Ok(true)));
        assert_eq!(p.bool("d"), Some(Err(())));
        assert_eq!(p.bool("e"), None);
    }

    #[test]
    fn truncated_escape_is_kept_literally() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41"), "A");
    }
}

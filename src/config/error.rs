//! Config errors and warnings, and turning byte offsets into file positions.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Boxed cause kept behind an [`Error::Invalid`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a config file could not be turned into a [`Config`](super::Config).
///
/// Every variant names the file; `Parse` and most `Invalid` errors also name
/// the line, and `Invalid` says what to write instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What the TOML reader said.
        message: String,
    },
    /// The TOML is well formed but a value cannot be used (boxed: it is
    /// the biggest variant and errors travel through many `Result`s).
    #[error(transparent)]
    Invalid(Box<Invalid>),
}

/// A value that cannot be used, where it is, and what to write instead.
#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {reason} (hint: {hint})", Location { path, line: *line })]
#[non_exhaustive]
pub struct Invalid {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// The key, e.g. `nas.url` or `job[home].path`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// What to write instead.
    pub hint: String,
    /// The underlying cause (I/O, glob or cron error), when there is one.
    #[source]
    pub source: Option<Cause>,
}

impl Error {
    /// The 1-based line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { line, .. } => Some(*line),
            Self::Invalid(invalid) => invalid.line,
        }
    }

    /// The config file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Parse { path, .. } => path,
            Self::Invalid(invalid) => &invalid.path,
        }
    }
}

/// A warning about a config that is valid but probably not what was meant
/// (a normalised path, an inline password, a file others can read...).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Note {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line the note is about, when known.
    pub line: Option<usize>,
    /// The key, e.g. `job[home].path`.
    pub field: String,
    /// The warning, with what to do about it.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = Location {
            path: &self.path,
            line: self.line,
        };
        write!(f, "{at}: warning: {}: {}", self.field, self.message)
    }
}

/// `file:line`, or just `file` when the line is unknown.
struct Location<'a> {
    path: &'a Path,
    line: Option<usize>,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Where a config came from: the file name used in messages and the start
/// of every line, to turn byte offsets (TOML spans) into line numbers.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) path: PathBuf,
    line_starts: Vec<usize>,
    text: String,
}

impl Default for Origin {
    /// A config built by hand: no text, and a placeholder name for messages.
    fn default() -> Self {
        Self {
            path: PathBuf::from("<config>"),
            line_starts: vec![0],
            text: String::new(),
        }
    }
}

impl fmt::Debug for Origin {
    /// The path only: the text may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("path", &self.path)
            .field("lines", &self.line_starts.len())
            .finish_non_exhaustive()
    }
}

impl Origin {
    /// Indexes `text`, which was read from (or stands for) `path`.
    pub(crate) fn new(path: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            path: path.to_path_buf(),
            line_starts,
            text: text.to_owned(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    /// `None` for a config that was not built from text.
    pub(crate) fn line_col(&self, offset: usize) -> Option<(usize, usize)> {
        if self.text.is_empty() && offset == 0 {
            return None;
        }
        let index = self.line_starts.partition_point(|&start| start <= offset);
        let line = index.max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let end = offset.min(self.text.len());
        let column = self
            .text
            .get(start..end)
            .map_or(1, |s| s.chars().count() + 1);
        Some((line, column))
    }

    /// 1-based line of a span, `None` when there is no source text.
    pub(crate) fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.and_then(|s| self.line_col(s.start))
            .map(|(line, _)| line)
    }

    /// 1-based line of the first `key = ...` in the source text.
    pub(crate) fn find_key_line(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_start();
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
            })
            .map(|i| i + 1)
    }

    /// The span of the `index`-th (from 0) `[[name]]` header line.
    pub(crate) fn nth_header_span(&self, name: &str, index: usize) -> Option<Range<usize>> {
        let header = format!("[[{name}]]");
        self.line_starts
            .iter()
            .filter_map(|&start| {
                let line = self.text.get(start..)?.lines().next()?;
                (line.trim().replace(' ', "") == header).then_some(start..start + line.len())
            })
            .nth(index)
    }

    /// The name of the table (`nas`, `job`, `job.compression`) whose header
    /// is the last one before `line`, or `""` for the top level.
    pub(crate) fn table_before(&self, line: usize) -> String {
        self.text
            .lines()
            .take(line)
            .filter_map(|l| {
                let l = l.trim();
                let inner = l.strip_prefix('[')?.split(']').next()?;
                Some(inner.trim_start_matches('[').trim().to_owned())
            })
            .last()
            .unwrap_or_default()
    }

    /// An [`Error::Invalid`] pointing at `span`.
    pub(crate) fn invalid(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        Error::Invalid(Box::new(Invalid {
            path: self.path.clone(),
            line: self.line(span),
            field: field.into(),
            reason: reason.into(),
            hint: hint.into(),
            source: None,
        }))
    }

    /// A [`Note`] pointing at `span`.
    pub(crate) fn note(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Note {
        Note {
            path: self.path.clone(),
            line: self.line(span),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Turns a TOML reader error into [`Error::Parse`], or into
    /// [`Error::Invalid`] with a suggestion for unknown keys.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> Error {
        let (line, column) = err
            .span()
            .and_then(|s| self.line_col(s.start))
            .unwrap_or((1, 1));
        if let Some(unknown) = UnknownKey::from_message(err.message()) {
            let line = err
                .span()
                .map(|_| line)
                .or_else(|| self.find_key_line(&unknown.key))
                .unwrap_or(line);
            let table = self.table_at(err.span().map(|s| s.start), line);
            return self.unknown_key(&unknown, &table, line);
        }
        Error::Parse {
            path: self.path.clone(),
            line,
            column,
            message: self.explain(err),
        }
    }

    /// The TOML reader's message, made plainer: the duplicated key is
    /// named, and Rust type names become words.
    fn explain(&self, err: &toml::de::Error) -> String {
        let message = err.message().trim_end();
        if message == "duplicate key" {
            let key = err
                .span()
                .and_then(|s| self.text.get(s))
                .map(|k| k.trim().trim_matches(['"', '\'']))
                .unwrap_or_default();
            return format!("duplicate key `{key}`: it is already set in this table; keep one");
        }
        ["i64", "u32", "u64", "i32", "usize"]
            .iter()
            .fold(message.to_owned(), |m, ty| {
                m.replace(&format!("expected {ty}"), "expected an integer")
            })
    }

    /// The dotted name of the table an unknown key at `offset` (on `line`)
    /// sits in: the last header before it, plus an inline table
    /// (`compression = { ... }`) or dotted key (`compression.level`) prefix.
    fn table_at(&self, offset: Option<usize>, line: usize) -> String {
        let table = self.table_before(line);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let before = offset
            .and_then(|end| self.text.get(start..end))
            .unwrap_or_default();
        let inner = match before.rsplit_once('{') {
            Some((head, _)) => head.trim_end().trim_end_matches('=').trim(),
            None if before.trim_end().ends_with('.') => {
                let dotted = before.trim_end().trim_end_matches('.');
                dotted.rsplit([' ', '\t', ',']).next().unwrap_or_default()
            }
            None => "",
        };
        let inner = inner.rsplit([' ', '\t', ',']).next().unwrap_or_default();
        match (table.is_empty(), inner.is_empty()) {
            (_, true) => table,
            (true, false) => inner.to_owned(),
            (false, false) => format!("{table}.{inner}"),
        }
    }

    fn unknown_key(&self, unknown: &UnknownKey, table: &str, line: usize) -> Error {
        let field = if table.is_empty() {
            unknown.key.clone()
        } else {
            format!("{table}.{}", unknown.key)
        };
        let where_ = if table.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in [{table}]")
        };
        let valid = unknown.expected.join(", ");
        let hint = match closest(&unknown.key, &unknown.expected) {
            Some(best) => format!("did you mean `{best}`? valid keys {where_}: {valid}"),
            None => format!("valid keys {where_}: {valid}"),
        };
        Error::Invalid(Box::new(Invalid {
            path: self.path.clone(),
            line: Some(line),
            field,
            reason: format!("unknown key `{}`", unknown.key),
            hint,
            source: None,
        }))
    }
}

/// The parts of serde's "unknown field `x`, expected one of `a`, `b`" message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnknownKey {
    pub(crate) key: String,
    pub(crate) expected: Vec<String>,
}

impl UnknownKey {
    /// Parses serde's unknown-field message; `None` for any other message.
    pub(crate) fn from_message(message: &str) -> Option<Self> {
        let rest = message.strip_prefix("unknown field `")?;
        let (key, rest) = rest.split_once('`')?;
        let expected = rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        Some(Self {
            key: key.to_owned(),
            expected,
        })
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a likely typo.
pub(crate) fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Levenshtein distance between two strings, counted in characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            let delete = previous[j + 1] + 1;
            let insert = current[j] + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_from_offsets() {
        let o = Origin::new(Path::new("c.toml"), "a = 1\nbé = 2\n");
        assert_eq!(o.line_col(0), Some((1, 1)));
        assert_eq!(o.line_col(6), Some((2, 1)));
        assert_eq!(o.line_col(9), Some((2, 3)));
        assert_eq!(Origin::default().line_col(0), None);
    }

    #[test]
    fn unknown_field_message_is_parsed() {
        let u =
            UnknownKey::from_message("unknown field `pasword`, expected one of `url`, `password`")
                .unwrap();
        assert_eq!(u.key, "pasword");
        assert_eq!(u.expected, ["url", "password"]);
        let u = UnknownKey::from_message("unknown field `x`, expected `dir`").unwrap();
        assert_eq!(u.expected, ["dir"]);
        assert!(UnknownKey::from_message("invalid type").is_none());
    }

    #[test]
    fn closest_suggests_typos_only() {
        let keys = ["password".to_owned(), "url".to_owned(), "user".to_owned()];
        assert_eq!(closest("pasword", &keys), Some("password"));
        assert_eq!(closest("usr", &keys), Some("user"));
        assert_eq!(closest("completely_else", &keys), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn table_before_finds_the_header() {
        let o = Origin::new(
            Path::new("c.toml"),
            "x = 1\n[nas]\nurl = 1\n[[job]]\nname = 2\n[job.hooks]\nb = 1\n",
        );
        assert_eq!(o.table_before(1), "");
        assert_eq!(o.table_before(3), "nas");
        assert_eq!(o.table_before(5), "job");
        assert_eq!(o.table_before(7), "job.hooks");
        assert_eq!(o.find_key_line("name"), Some(5));
    }
}

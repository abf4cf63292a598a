//! The environment a config is resolved in, passed in explicitly.
//!
//! The library never reads environment variables itself: the binary fills a
//! [`ConfigEnv`] from the real process environment, tests and embedders fill
//! one by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variables the config may refer to: `password_env` names,
/// `CREDENTIALS_DIRECTORY`, `STATE_DIRECTORY`, `XDG_STATE_HOME`, `HOME`.
///
/// `Debug` lists variable names only: values may be passwords.
#[derive(Clone, Default)]
pub struct ConfigEnv {
    vars: BTreeMap<String, String>,
}

impl ConfigEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// An environment holding these variables, e.g.
    /// `ConfigEnv::from_vars(std::env::vars())` in a binary.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The same environment with one more variable set.
    #[must_use]
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of a variable; `None` when unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// A variable holding a non-empty absolute path.
    fn abs_path(&self, name: &str) -> Option<PathBuf> {
        self.var(name)
            .filter(|v| Path::new(v).is_absolute())
            .map(PathBuf::from)
    }

    /// systemd's `$CREDENTIALS_DIRECTORY` (set with `LoadCredential=`).
    pub fn credentials_directory(&self) -> Option<PathBuf> {
        self.abs_path("CREDENTIALS_DIRECTORY")
    }
}

impl fmt::Debug for ConfigEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The state directory to use when the config names none: systemd's
/// `$STATE_DIRECTORY` (its first entry), else `$XDG_STATE_HOME/synback`,
/// else `$HOME/.local/state/synback`. `None` when none of these is set to
/// an absolute path.
pub fn default_state_dir(env: &ConfigEnv) -> Option<PathBuf> {
    let systemd = env
        .var("STATE_DIRECTORY")
        .and_then(|v| v.split(':').next())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    systemd
        .or_else(|| env.abs_path("XDG_STATE_HOME").map(|p| p.join("synback")))
        .or_else(|| {
            env.abs_path("HOME")
                .map(|p| p.join(".local").join("state").join("synback"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_order() {
        let env = ConfigEnv::new()
            .with_var("HOME", "/home/u")
            .with_var("XDG_STATE_HOME", "/xdg")
            .with_var("STATE_DIRECTORY", "/var/lib/synback:/var/lib/other");
        assert_eq!(
            default_state_dir(&env),
            Some(PathBuf::from("/var/lib/synback"))
        );
        let env = ConfigEnv::new()
            .with_var("HOME", "/home/u")
            .with_var("XDG_STATE_HOME", "/xdg");
        assert_eq!(default_state_dir(&env), Some(PathBuf::from("/xdg/synback")));
        let env = ConfigEnv::new().with_var("HOME", "/home/u");
        assert_eq!(
            default_state_dir(&env),
            Some(PathBuf::from("/home/u/.local/state/synback"))
        );
        let env = ConfigEnv::new().with_var("HOME", "relative");
        assert_eq!(default_state_dir(&env), None);
    }

    #[test]
    fn debug_hides_values() {
        let env = ConfigEnv::from_vars([("SYNBACK_PASSWORD", "hunter2")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("SYNBACK_PASSWORD"));
        assert!(!shown.contains("hunter2"));
    }
}

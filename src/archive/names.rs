//! User and group names for tar headers, read from `/etc/passwd` and
//! `/etc/group` once per run (no libc calls, no per-file lookups).

use std::collections::HashMap;
use std::fs;

/// uid → user name and gid → group name.
#[derive(Debug, Default)]
pub(crate) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// Loads the local databases; missing or unreadable files give no names.
    pub(crate) fn load() -> Self {
        Self {
            users: parse(&fs::read_to_string("/etc/passwd").unwrap_or_default()),
            groups: parse(&fs::read_to_string("/etc/group").unwrap_or_default()),
        }
    }

    pub(crate) fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }

    pub(crate) fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }
}

/// Parses `name:x:id:...` lines; the first name for an id wins.
fn parse(text: &str) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(id) = id.parse() {
            map.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_lines_and_skips_junk() {
        let map = parse(
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbad\nalt:x:0:0::/:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh",
        );
        assert_eq!(map.get(&0).unwrap(), "root");
        assert_eq!(map.get(&1000).unwrap(), "me");
        assert_eq!(map.len(), 2);
    }
}

//! The documentation and deployment files agree with the code:
//! docs/CONFIG.md documents exactly the keys of config.example.toml, the
//! Docker compose example mounts the Dockerfile's volumes, and the Home
//! Assistant add-on's options turn into a config that synback accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `section.key` for every key in the example config, commented-out
/// alternatives (`# password_file = ...`) included.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let commented = line.trim_start().starts_with('#');
        let body = line.trim_start().trim_start_matches('#').trim();
        if let Some(name) = table_name(body) {
            section = name;
            continue;
        }
        // A commented key is "# key = value" (one space), prose is not.
        if commented && !line.trim_start().starts_with("# ") {
            continue;
        }
        let Some((key, value)) = body.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if is_key && !value.trim().is_empty() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// `job.retention` for `[job.retention]`, `job` for `[[job]]`.
fn table_name(text: &str) -> Option<String> {
    let inner = text
        .strip_prefix("[[")
        .and_then(|t| t.strip_suffix("]]"))
        .or_else(|| text.strip_prefix('[').and_then(|t| t.strip_suffix(']')))?;
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    valid.then(|| inner.to_owned())
}

/// `section.key` for every table row "| `key` | ..." under a heading
/// holding "`[section]`" or "`[[section]]`".
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut section = None;
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            section = line.split('`').nth(1).and_then(table_name);
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((key, _)) = rest.split_once('`') else {
            continue;
        };
        if let Some(section) = &section {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_example_config_key_is_documented_and_nothing_else() {
    let example = example_keys(&read("config.example.toml"));
    let documented = documented_keys(&read("docs/CONFIG.md"));
    assert!(example.len() > 40, "parsed too few keys: {example:?}");
    let undocumented: Vec<_> = example.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&example).collect();
    let mut problems = Vec::new();
    for key in &undocumented {
        let (section, name) = key.rsplit_once('.').unwrap();
        problems.push(format!(
            "config.example.toml has `{key}` but docs/CONFIG.md does not: add a row \"| `{name}` | ...\" under the heading with `[{section}]`"
        ));
    }
    for key in &unknown {
        problems.push(format!(
            "docs/CONFIG.md documents `{key}` but config.example.toml does not have it: add it to the example (commented out if optional) or remove the row"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_key_parsers_read_sections_and_commented_keys() {
    let example = "[nas]\nurl = \"x\"\n# password_file = \"/p\"\n# 1 = Monday, prose\n#   openssl x = y\n[[job]]\nname = \"a\"\n# [job.encryption]\n# recipients = [\"age1\"]\n";
    let keys: Vec<_> = example_keys(example).into_iter().collect();
    assert_eq!(
        keys,
        [
            "job.encryption.recipients",
            "job.name",
            "nas.password_file",
            "nas.url"
        ]
    );
    let doc = "## `[nas]`\n| key | t |\n|---|---|\n| `url` | s |\n### `[job.lock]`\n| `stale_after` | d |\n## Other\n| `ignored` | x |\n";
    let keys: Vec<_> = documented_keys(doc).into_iter().collect();
    assert_eq!(keys, ["job.lock.stale_after", "nas.url"]);
}

//! `docs/operations.md` against the code: every configuration key, command and `health` check it
//! lists exists, and every one the code has is listed (its metrics table is checked against what
//! running roles serve in `tests/metrics.rs`). A guide that drifts from the program is worse than
//! none, so this fails the build when they part.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

const GUIDE: &str = include_str!("../docs/operations.md");
const CONFIG_SOURCE: &str = include_str!("../src/config/raw.rs");
const HEALTH_SOURCE: &str = include_str!("../src/cli/cluster.rs");

/// The backquoted first cells of the table under the heading that starts with `heading`.
fn table_names(heading: &str) -> BTreeSet<String> {
    let section = GUIDE
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/operations.md has no section `## {heading}`"));
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('`').nth(1))
        .map(str::to_string)
        .collect()
}

/// Shows both differences at once, so one run tells the whole fix.
fn assert_same(what: &str, documented: &BTreeSet<String>, in_code: &BTreeSet<String>) {
    let missing: Vec<&String> = in_code.difference(documented).collect();
    let stale: Vec<&String> = documented.difference(in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{what}: in the code but not in docs/operations.md: {missing:?}; in the guide but not in the code: {stale:?}"
    );
}

#[test]
fn every_configuration_key_is_documented_and_exists() {
    // The fields of the `Raw*` structs the loader deserializes (with `deny_unknown_fields`, so
    // they are exactly the accepted keys), minus the table names that nest the others.
    let mut keys = BTreeSet::new();
    let mut in_raw = false;
    for line in CONFIG_SOURCE.lines() {
        let line = line.trim_start_matches("pub(super) ");
        if line.starts_with("struct Raw") {
            in_raw = true;
        } else if line.starts_with('}') {
            in_raw = false;
        } else if in_raw {
            let field = line.trim().trim_start_matches("pub(super) ");
            if let Some((name, _)) = field.split_once(':') {
                if !name.contains(' ') && !name.starts_with("//") && !name.starts_with('#') {
                    keys.insert(name.to_string());
                }
            }
        }
    }
    for table in ["site", "hub", "cms", "node", "storage_group"] {
        keys.remove(table);
    }
    assert!(
        keys.len() > 20,
        "parsed too few keys from src/config/raw.rs: {keys:?}"
    );
    assert_same(
        "configuration keys",
        &table_names("6. Configuration keys"),
        &keys,
    );
}

#[test]
fn every_command_is_documented_and_exists() {
    let out = Command::new(common::bin())
        .arg("--help")
        .output()
        .expect("run hubrelay --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: BTreeSet<String> = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists the commands")
        .split("Options:")
        .next()
        .unwrap_or_default()
        .lines()
        // `  name  what it does`; a wrapped description continues further indented.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert_same("commands", &table_names("8. Commands"), &commands);
}

#[test]
fn every_health_check_is_documented_and_exists() {
    // Every check is built as `check("Name", ...)` or `check(\n "Name",`.
    let mut checks = BTreeSet::new();
    for part in HEALTH_SOURCE.split("check(").skip(1) {
        let name = part
            .trim_start()
            .strip_prefix('"')
            .and_then(|p| p.split('"').next());
        if let Some(name) = name.filter(|n| n.chars().all(char::is_alphanumeric) && !n.is_empty()) {
            checks.insert(name.to_string());
        }
    }
    assert!(checks.len() >= 8, "parsed too few checks: {checks:?}");
    assert_same("health checks", &table_names("9. What each"), &checks);
}

//! The packaging in `deploy/`: the systemd units are valid for systemd
//! (`systemd-analyze verify`, against a scratch root holding the binary),
//! and the template unit is the plain one with an instance name, line for
//! line. (The Dockerfile cannot be built here: no container daemon runs.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// A unit's settings: no comments, no blank lines.
fn settings(file: &str) -> Vec<String> {
    std::fs::read_to_string(deploy(file))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn the_template_unit_is_the_service_unit_with_an_instance_name() {
    let plain = settings("ocirelay.service");
    let template = settings("ocirelay@.service");
    let (named, rest): (Vec<_>, Vec<_>) = template.into_iter().partition(|l| l.contains("%i"));
    assert_eq!(
        named,
        [
            "Description=ocirelay registry mirror (%i)",
            "SyslogIdentifier=ocirelay-%i"
        ]
    );
    let plain: Vec<_> = plain
        .into_iter()
        .filter(|l| l != "Description=ocirelay registry mirror")
        .collect();
    assert_eq!(
        rest, plain,
        "ocirelay@.service drifted from ocirelay.service"
    );
}

#[test]
fn systemd_accepts_both_units() {
    let root = common::tempdir::Dir::new("units");
    let r = root.path();
    for d in ["usr/bin", "usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    // What the units name must exist in the root they are checked in.
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_ocirelay"), r.join("usr/bin/ocirelay")).unwrap();
    std::fs::copy("/bin/kill", r.join("usr/bin/kill")).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/systemd/system")
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(copied.success());
    let units = r.join("etc/systemd/system");
    std::fs::copy(deploy("ocirelay.service"), units.join("ocirelay.service")).unwrap();
    std::fs::copy(deploy("ocirelay@.service"), units.join("ocirelay@.service")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", r.display()))
        .arg("ocirelay.service")
        .arg("ocirelay@blue.service")
        .output()
        .expect("systemd-analyze (Debian package systemd; tests/deps.sh installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

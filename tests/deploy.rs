//! The packaging in `deploy/`: the systemd units are valid for systemd
//! (`systemd-analyze verify`, against a scratch root holding the binary),
//! and the template unit is the plain one with an instance name, line for
//! line. The Kubernetes example's embedded config passes `ocirelay config
//! check` and agrees with its Deployment (probes on the ops listener, the
//! cache on the pod's volume, S3 credentials from the Secret). (The
//! Dockerfile cannot be built here, nor the manifests applied: no container
//! daemon or cluster runs.)

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

const K8S: &str = "k8s/ocirelay.yaml";

/// The lines of the YAML block scalar that follows `key` (`key: |`), with
/// the block's indentation removed: the ConfigMap's embedded file.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("an empty block");
    body.iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string() + "\n")
        .collect()
}

/// The one line of `yaml` (trimmed) that starts with `prefix`.
fn line_starting(yaml: &str, prefix: &str) -> String {
    let found: Vec<&str> = yaml
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "lines starting with {prefix:?}: {found:?}");
    found[0].to_string()
}

#[test]
fn the_kubernetes_example_config_passes_config_check_with_the_secrets_env() {
    let yaml = std::fs::read_to_string(deploy(K8S)).unwrap();
    let config = block_scalar(&yaml, "ocirelay.toml");
    assert!(config.contains("\n[cache.s3]\n"), "{config}");
    // The Secret's keys, as the pod's environment (envFrom).
    let id = line_starting(&yaml, "AWS_ACCESS_KEY_ID:");
    let secret = line_starting(&yaml, "AWS_SECRET_ACCESS_KEY:");
    assert!(id.contains("replace-me") && secret.contains("replace-me"));
    let (ok, said) = common::config_check_env(
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", Some("AKIDEXAMPLE")),
            ("AWS_SECRET_ACCESS_KEY", Some("example-secret")),
        ],
    );
    assert!(ok, "{said}\n{config}");
    // Without the Secret in the environment the config names no credentials.
    let (ok, said) = common::config_check_env(
        &config,
        &[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)],
    );
    assert!(!ok && said.contains("no credentials"), "{said}");
}

#[test]
fn the_kubernetes_deployment_agrees_with_its_embedded_config() {
    let yaml = std::fs::read_to_string(deploy(K8S)).unwrap();
    let text = block_scalar(&yaml, "ocirelay.toml");
    let env = |k: &str| k.starts_with("AWS_").then(|| "x".to_string());
    let config = ocirelay::config::Config::parse_with_env(&text, &env).expect("config parses");

    // The probes ask the ops listener, on the port the config gives it, from
    // outside the pod (so not loopback).
    let ocirelay::config::MetricsListen::Own { addr, .. } = config.metrics else {
        panic!("the example needs metrics_listen on an address of its own");
    };
    assert!(
        addr.ip().is_unspecified(),
        "kubelet probes come from outside the pod: {addr}"
    );
    let http = config.listen.first().expect("a listener").port();
    // Tier 1 lives on the pod's volume; tier 2 is the bucket.
    let cache = config.cache.expect("[cache]");
    assert!(cache.s3.is_some(), "the example has a shared tier");
    let lines = [
        format!("- {{ name: ops, containerPort: {} }}", addr.port()),
        "httpGet: { path: \"/readyz?exclude=upstreams\", port: ops }".into(),
        "httpGet: { path: /healthz, port: ops }".into(),
        format!("- {{ name: http, containerPort: {http} }}"),
        format!("- {{ name: cache, mountPath: {} }}", cache.dir.display()),
        "- secretRef: { name: ocirelay-s3 }".into(),
        "name: ocirelay-s3".into(),
        // Several replicas, and a budget that keeps most of them up.
        "replicas: 3".into(),
        "minAvailable: 2".into(),
    ];
    let kinds = [
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    .map(|k| format!("kind: {k}"));
    for line in lines.iter().chain(&kinds) {
        let n = yaml.lines().filter(|l| l.trim() == line).count();
        assert_eq!(n, 1, "{line:?} should be in {K8S} once");
    }
}

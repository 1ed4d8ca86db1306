//! `ocirelay config check FILE` reports what would go wrong beyond syntax,
//! each problem with the line it comes from: hosts two registries claim, a
//! host that is the mirror's own domain, a cache directory that cannot be
//! created or written, a TLS certificate that is not its key's.

mod common;

use std::path::Path;
use std::process::Command;

use common::tempdir::Dir;

/// Runs `config check` on `text`: (success, stdout + stderr).
fn check(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("ocirelay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocirelay"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// Checks `text` and asserts that it fails on `line` with `words`.
fn assert_fails_on(dir: &Path, text: &str, line: usize, words: &str) {
    let (ok, said) = check(dir, text);
    assert!(!ok, "{said}");
    assert_problem(&said, line, words);
}

/// Asserts that `said` names `line` with `words`.
fn assert_problem(said: &str, line: usize, words: &str) {
    assert!(
        said.lines()
            .any(|l| l.contains(&format!(": line {line}: ")) && l.contains(words)),
        "no {words:?} on line {line} in: {said}"
    );
}

const TOP: &str = "listen = [\"127.0.0.1:5000\"]\n";

#[test]
fn a_sound_config_is_ok_and_the_probe_leaves_nothing_behind() {
    let dir = Dir::new("check-ok");
    let cache = dir.path().join("not-yet/cache");
    let (ok, said) = check(
        dir.path(),
        &format!("{TOP}[cache]\ndir = \"{}\"\n", cache.display()),
    );
    assert!(ok, "{said}");
    assert!(said.contains(": ok ("), "{said}");
    assert!(
        !dir.path().join("not-yet").exists(),
        "check created the cache dir"
    );
}

#[test]
fn hosts_two_registries_claim_are_named_on_the_claiming_line() {
    let dir = Dir::new("check-hosts");
    let text = format!(
        "{TOP}domain = \"mirror.test\"\n[cache]\nenabled = false\n\
         [[registry]]\nname = \"corp\"\nupstream = \"https://corp.test\"\n\
         hosts = [\"registry.corp.test\"]\n\
         [[registry]]\nname = \"corp2\"\nupstream = \"https://corp2.test\"\n\
         hosts = [\"other.test\",\n  \"registry.corp.test\"]\n"
    );
    let collision = "host registry.corp.test routes to both corp and corp2";
    assert_fails_on(dir.path(), &text, 13, collision);

    // A registry's label colliding with a built-in one's under the domain.
    let text = format!(
        "{TOP}domain = \"mirror.test\"\n[cache]\nenabled = false\n\
         [[registry]]\nname = \"mine\"\nupstream = \"https://mine.test\"\nprefix = \"ghcr\"\n"
    );
    let collision = "host ghcr.mirror.test routes to both ghcr.io and mine";
    assert_fails_on(dir.path(), &text, 8, collision);

    // The mirror's own domain given to one registry.
    let text = format!(
        "{TOP}domain = \"mirror.test\"\n[cache]\nenabled = false\n\
         [[registry]]\nname = \"corp\"\nupstream = \"https://corp.test\"\nhosts = [\"mirror.test\"]\n"
    );
    assert_fails_on(dir.path(), &text, 8, "is the mirror's own domain");
}

#[test]
fn a_cache_dir_that_cannot_be_created_or_written_is_named_on_its_line() {
    let dir = Dir::new("check-cache");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let text = format!(
        "{TOP}\n[cache]\nmax_size = \"1GiB\"\ndir = \"{}/cache\"\n",
        file.display()
    );
    assert_fails_on(dir.path(), &text, 5, "cannot be created");

    let text = format!("{TOP}[cache]\ndir = \"{}\"\n", file.display());
    assert_fails_on(dir.path(), &text, 3, "not a directory");
}

/// A self-signed certificate for localhost (PEM) and its key (PEM).
fn cert_and_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn a_certificate_that_is_not_its_keys_is_named_on_its_line() {
    let dir = Dir::new("check-tls");
    let (cert, key) = cert_and_key();
    let (_, other_key) = cert_and_key();
    let path = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (cert, key, other_key) = (
        path("c.pem", &cert),
        path("k.pem", &key),
        path("o.pem", &other_key),
    );
    let listener = |cert: &str, key: &str| {
        format!(
            "{TOP}[cache]\nenabled = false\n[[tls_listener]]\naddr = \"127.0.0.1:0\"\n\
             cert = \"{cert}\"\nkey = \"{key}\"\n"
        )
    };
    let (ok, said) = check(dir.path(), &listener(&cert, &key));
    assert!(ok, "the matching pair: {said}");

    assert_fails_on(
        dir.path(),
        &listener(&cert, &other_key),
        6,
        "the key is not the certificate's",
    );

    assert_fails_on(
        dir.path(),
        &listener(&cert, "/nonexistent/key.pem"),
        7,
        "cannot read /nonexistent/key.pem",
    );
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let dir = Dir::new("check-all");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let text = format!(
        "{TOP}domain = \"mirror.test\"\n\
         [[tls_listener]]\naddr = \"127.0.0.1:0\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n\
         [cache]\ndir = \"{}/x\"\n\
         [[registry]]\nname = \"corp\"\nupstream = \"https://corp.test\"\nhosts = [\"mirror.test\"]\n",
        file.display()
    );
    let (ok, said) = check(dir.path(), &text);
    assert!(!ok, "{said}");
    assert_problem(&said, 5, "cannot read /nonexistent/c.pem");
    assert_problem(&said, 8, "cannot be created");
    assert_problem(&said, 12, "own domain");
    assert!(said.contains(": 3 problem(s)"), "{said}");
    let lines: Vec<usize> = said
        .lines()
        .filter_map(|l| l.split(": line ").nth(1)?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(lines, [5, 8, 12]);
}

#[test]
fn the_default_configs_commented_shared_tier_example_passes_when_uncommented() {
    let dir = Dir::new("check-s3-example");
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/default.toml"),
    )
    .unwrap();
    // The `# [cache.s3]` block: commented lines up to the first blank one.
    let example: Vec<&str> = default
        .lines()
        .skip_while(|l| *l != "# [cache.s3]")
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches("# "))
        .collect();
    assert!(example.len() > 10, "no [cache.s3] example in default.toml");
    // Files named in the example do not exist here: the rest must be right.
    let table: String = example
        .iter()
        .filter(|l| !l.starts_with("ca_file") && !l.starts_with("credentials_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cache = dir.path().join("cache");
    let (ok, said) = check(
        dir.path(),
        &format!("{TOP}[cache]\ndir = \"{}\"\n{table}", cache.display()),
    );
    assert!(ok, "{said}\n{table}");
}

#[test]
fn the_readmes_shared_tier_examples_pass_config_check() {
    let dir = Dir::new("check-readme-s3");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let examples: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("[cache.s3]"))
        .collect();
    assert!(examples.len() >= 3, "AWS, R2, self-hosted: {examples:?}");
    // What the examples leave to the operator: a credentials file, an
    // account id in the R2 host name.
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n",
    )
    .unwrap();
    for example in examples {
        let table: String = example
            .replace("<account-id>", "0123abcd")
            .lines()
            .map(|l| match l.starts_with("credentials_file") {
                true => format!("credentials_file = \"{}\"\n", creds.display()),
                false => format!("{l}\n"),
            })
            .collect();
        let text = format!(
            "{TOP}[cache]\ndir = \"{}\"\n{table}",
            dir.path().join("cache").display()
        );
        let (ok, said) = common::config_check_env(
            &text,
            &[
                ("AWS_ACCESS_KEY_ID", Some("AK")),
                ("AWS_SECRET_ACCESS_KEY", Some("SK")),
            ],
        );
        assert!(ok, "{said}\n{text}");
    }
}

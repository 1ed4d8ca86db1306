//! `regtoken gen-certs DIR NAME=HOST[,HOST..]...`
//!
//! Writes, into DIR:
//! - `ca.pem`, `ca-key.pem`: the test CA that every TLS server certificate chains to;
//! - for each NAME: `NAME.pem` (leaf), `NAME-fullchain.pem` (leaf + CA), `NAME-key.pem`;
//!   the leaf carries every HOST as a subject alternative name (IP or DNS);
//! - `token-root.pem`: a separate root for the registry's `rootcertbundle`;
//! - `token-signer.pem`, `token-signer-key.pem`: the ES256 key that signs JWTs and its
//!   certificate, issued by `token-root.pem` (sent in the JWT header as `x5c`).

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::fs;
use std::path::Path;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn base_params(cn: &str, sans: Vec<String>) -> Res<CertificateParams> {
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "ocirelay e2e");
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2099, 12, 31);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn make_root(cn: &str) -> Res<(Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = base_params(cn, Vec::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    Ok((cert, key))
}

fn write(dir: &Path, name: &str, data: &str) -> Res<()> {
    fs::write(dir.join(name), data)?;
    Ok(())
}

pub fn gen_certs(dir: &Path, specs: &[String]) -> Res<()> {
    fs::create_dir_all(dir)?;
    let (ca, ca_key) = make_root("ocirelay e2e test CA")?;
    write(dir, "ca.pem", &ca.pem())?;
    write(dir, "ca-key.pem", &ca_key.serialize_pem())?;

    for spec in specs {
        let (name, hosts) = spec
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=HOST[,HOST..], got {spec:?}"))?;
        let hosts: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if name.is_empty() || hosts.is_empty() {
            return Err(format!("bad spec {spec:?}").into());
        }
        let key = KeyPair::generate()?;
        let mut p = base_params(&hosts[0], hosts.clone())?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        write(dir, &format!("{name}.pem"), &cert.pem())?;
        write(
            dir,
            &format!("{name}-fullchain.pem"),
            &format!("{}{}", cert.pem(), ca.pem()),
        )?;
        write(dir, &format!("{name}-key.pem"), &key.serialize_pem())?;
    }

    let (troot, troot_key) = make_root("ocirelay e2e token root")?;
    write(dir, "token-root.pem", &troot.pem())?;
    let skey = KeyPair::generate()?;
    let mut p = base_params("ocirelay e2e token signer", Vec::new())?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let scert = p.signed_by(&skey, &troot, &troot_key)?;
    write(dir, "token-signer.pem", &scert.pem())?;
    write(dir, "token-signer-key.pem", &skey.serialize_pem())?;
    Ok(())
}

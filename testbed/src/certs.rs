//! Key material generated fresh for each test bed: a small CA, a serving
//! certificate for 127.0.0.1 signed by it (rustls refuses a self-signed CA used
//! as an end-entity certificate), and the service-account signing key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Paths of the files the apiserver and the kubeconfig need.
pub struct CertFiles {
    pub ca_file: std::path::PathBuf,
    pub serving_cert: std::path::PathBuf,
    pub serving_key: std::path::PathBuf,
    pub sa_key: std::path::PathBuf,
    pub sa_pub: std::path::PathBuf,
}

pub fn generate(dir: &Path) -> Result<CertFiles, String> {
    let err = |what: &str, e: rcgen::Error| format!("generating {what}: {e}");
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hostforge-testbed-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA cert", e))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let leaf_key = KeyPair::generate().map_err(|e| err("serving key", e))?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| err("serving cert", e))?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| err("serving cert", e))?;

    let sa_key = KeyPair::generate().map_err(|e| err("service-account key", e))?;

    let ca_pem = ca_cert.pem();
    let files = CertFiles {
        ca_file: dir.join("ca.crt"),
        serving_cert: dir.join("serving.crt"),
        serving_key: dir.join("serving.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    let write = |p: &Path, s: String| {
        std::fs::write(p, s).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write(&files.ca_file, ca_pem.clone())?;
    write(&files.serving_cert, format!("{}{ca_pem}", leaf_cert.pem()))?;
    write(&files.serving_key, leaf_key.serialize_pem())?;
    write(&files.sa_key, sa_key.serialize_pem())?;
    write(&files.sa_pub, sa_key.public_key_pem())?;
    Ok(files)
}

//! Certificates made by the test (rcgen): a CA per test, and certificates it signs for loopback (`127.0.0.1`
//! and `localhost`, usable by servers and clients alike), written as PEM files in a directory the caller owns.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority: its certificate in `ca.pem` under its name, and the key it signs with.
pub struct TestCa {
    /// The CA certificate (PEM), what a peer that trusts this CA is given.
    pub cert: PathBuf,
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA called `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("HarmonyLite test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write the CA certificate");
        TestCa {
            cert,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer,
        }
    }

    /// A certificate for `127.0.0.1` and `localhost` signed by this CA, for server and client use, written to
    /// `<dir>/<ca name>-<who>.pem` and `.key`.
    pub fn issue(&self, who: &str) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, who);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("certificate key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{who}.pem", self.name)),
            key: self.dir.join(format!("{}-{who}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }
}

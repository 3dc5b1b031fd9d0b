//! Certificates for the TLS tests, made fresh per test with `rcgen`: a CA,
//! a server certificate it signs for `localhost` only (so connecting by
//! `127.0.0.1` fails the name check), a client certificate it signs (for a
//! Redis that checks clients), and a second, unrelated CA (the "wrong CA").
//! Written as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files of a test PKI.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Make the CA, the server and client certificates and the other CA.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki { dir };
        let ca = pki.authority("citadel test CA", "ca");
        pki.authority("another CA", "other-ca");
        pki.leaf(&ca, "localhost", vec!["localhost".into()], "server");
        pki.leaf(&ca, "citadel-node", Vec::new(), "client");
        pki
    }

    fn authority(&self, name: &str, file: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        self.write(&format!("{file}.pem"), &cert.pem());
        Issuer::new(params, key)
    }

    fn leaf(&self, issuer: &Issuer<'_, KeyPair>, name: &str, names: Vec<String>, file: &str) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, issuer).expect("signed certificate");
        self.write(&format!("{file}.pem"), &cert.pem());
        self.write(&format!("{file}.key"), &key.serialize_pem());
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write PEM");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server's certificate (for `localhost`) and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server.key"))
    }

    /// The client's certificate and key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client.key"))
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

//! Ed25519 signatures of component digests. `citadel component keygen`
//! writes a key pair, `publish --sign KEYFILE` signs the digest's 32 bytes,
//! and nodes check a published component's signature against their
//! `trusted_keys` before they load it.
//!
//! A secret key file holds one line, `citadel-ed25519-secret <hex>` (mode
//! 0600); the public key goes beside it as `<file>.pub`, one line of hex —
//! the form `trusted_keys` takes.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use ed25519_dalek::SigningKey;
use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};

use super::Digest;

const SECRET_TAG: &str = "citadel-ed25519-secret";

/// Why a component's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Keys are trusted but the component is unsigned.
    #[error("it is unsigned, and this node trusts only signed components (trusted_keys)")]
    Unsigned,
    /// Signed by a key the node does not trust.
    #[error("it is signed by {0}, which is not in trusted_keys")]
    UnknownSigner(String),
    /// The signature does not match the digest.
    #[error("its signature does not match its digest (signed by {0})")]
    Mismatch(String),
    /// The signature or key is not valid hex of the right length.
    #[error("its signature record is malformed: {0}")]
    Malformed(String),
}

/// A new secret key, from the system's random source.
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// The public key, hex (what `trusted_keys` lists).
pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

/// Write `key` to `path` (refusing to overwrite, mode 0600) and its public
/// key to `<path>.pub`; the public key file's path.
pub fn write_key(path: &Path, key: &SigningKey) -> std::io::Result<PathBuf> {
    let mut secret = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(secret, "{SECRET_TAG} {}", hex::encode(key.to_bytes()))?;
    secret.sync_all()?;
    let public = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&public, format!("{}\n", public_hex(key)))?;
    Ok(public)
}

/// Read a secret key file written by [`write_key`].
pub fn read_key(path: &Path) -> Result<SigningKey, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read signing key {}: {err}", path.display()))?;
    let malformed = || {
        format!(
            "{} is not a citadel signing key (expected one line `{SECRET_TAG} <64 hex digits>`, as `citadel component keygen` writes)",
            path.display()
        )
    };
    let hex_key = text.trim().strip_prefix(SECRET_TAG).ok_or_else(malformed)?.trim();
    let mut bytes = [0; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| malformed())?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Sign `digest`; the signature, hex.
pub fn sign(key: &SigningKey, digest: &Digest) -> String {
    hex::encode(key.sign(digest.as_bytes()).to_bytes())
}

fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| format!("{text:?} is not 64 hex digits"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|err| format!("{text:?} is not an ed25519 public key: {err}"))
}

/// The public keys a node accepts signatures from (`trusted_keys`). With
/// none, components need no signature (but a signature present must still
/// be valid).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Parse hex public keys; the error names the bad one.
    pub fn parse(keys: &[String]) -> Result<TrustedKeys, String> {
        keys.iter()
            .map(|key| parse_public(key))
            .collect::<Result<_, _>>()
            .map(TrustedKeys)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Check `signature` (hex) by `signer` (hex public key) over `digest`.
    pub fn check(&self, digest: &Digest, signature: Option<&str>, signer: Option<&str>) -> Result<(), SignatureError> {
        let (signature, signer) = match (signature, signer) {
            (None, _) if self.is_empty() => return Ok(()),
            (None, _) => return Err(SignatureError::Unsigned),
            (Some(_), None) => return Err(SignatureError::Malformed("a signature without its signer".into())),
            (Some(signature), Some(signer)) => (signature, signer),
        };
        let key = parse_public(signer).map_err(SignatureError::Malformed)?;
        if !self.is_empty() && !self.0.contains(&key) {
            return Err(SignatureError::UnknownSigner(signer.to_string()));
        }
        let mut bytes = [0; 64];
        hex::decode_to_slice(signature, &mut bytes)
            .map_err(|_| SignatureError::Malformed(format!("signature {signature:?} is not 128 hex digits")))?;
        key.verify(digest.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::Mismatch(signer.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify_only_for_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.key");
        let key = generate();
        let public = write_key(&path, &key).unwrap();
        assert!(write_key(&path, &key).is_err(), "an existing key is never overwritten");
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        let public = std::fs::read_to_string(public).unwrap();
        let trusted = TrustedKeys::parse(&[public.trim().to_string()]).unwrap();

        let digest = Digest::of(b"component");
        let signature = sign(&key, &digest);
        let signer = public_hex(&key);
        trusted.check(&digest, Some(&signature), Some(&signer)).unwrap();
        assert_eq!(
            trusted.check(&Digest::of(b"other"), Some(&signature), Some(&signer)),
            Err(SignatureError::Mismatch(signer.clone()))
        );
        assert_eq!(trusted.check(&digest, None, None), Err(SignatureError::Unsigned));
        let stranger = generate();
        let foreign = sign(&stranger, &digest);
        assert_eq!(
            trusted.check(&digest, Some(&foreign), Some(&public_hex(&stranger))),
            Err(SignatureError::UnknownSigner(public_hex(&stranger)))
        );
        // Without trusted keys an unsigned component passes, a bad signature does not.
        let open = TrustedKeys::default();
        open.check(&digest, None, None).unwrap();
        assert!(
            open.check(&Digest::of(b"other"), Some(&signature), Some(&signer))
                .is_err()
        );
        assert!(read_key(&dir.path().join("publisher.key.pub")).is_err());
    }
}

//! Content addresses: a component is identified by the sha256 of its bytes.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The sha256 of a component's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Hash `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, without the `sha256:` prefix (used in file names).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 32 bytes (what a signature signs).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parse `sha256:<hex>` (or bare hex).
    pub fn parse(text: &str) -> Option<Digest> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text.strip_prefix("sha256:").unwrap_or(text), &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Digest {
    /// `sha256:<hex>`, the form used on the wire and in pins.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_display_agree() {
        let digest = Digest::of(b"abc");
        assert_eq!(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest.to_string(), format!("sha256:{}", digest.hex()));
        assert_eq!(digest.short(), "ba7816bf8f01");
    }
}

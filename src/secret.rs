//! Bearer token secrets: `fc_` and 32 bytes from the operating system's randomness (the
//! `getrandom` crate, already in the tree under `uuid`) as 64 hex digits. A secret is shown once
//! to whoever created it; fedcore keeps only its SHA-256, and compares hashes.

use sha2::{Digest, Sha256};

/// What every token starts with, so a leaked one is recognisable (and greppable).
pub const PREFIX: &str = "fc_";

/// A new secret, or the OS's error when it has no randomness to give.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a secret: lowercase hex SHA-256 of its UTF-8 bytes.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_hex_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64, "{a}");
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
        assert_eq!(
            token_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

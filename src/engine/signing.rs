//! Ed25519 signatures over receipts and audit checkpoints, with ed25519-dalek. Keys are written
//! the way C2SP signed notes (and Go's `golang.org/x/mod/sumdb/note`) write them: a verifier key
//! `<name>+<key id hex>+<base64(0x01 || public key)>` and a private key `PRIVATE+KEY+<name>+<key id
//! hex>+<base64(0x01 || seed)>`. A checkpoint is a C2SP tlog-checkpoint of the audit head as a
//! signed note. Pure functions of their inputs: reading and writing the key file is `keyfile`'s.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// The signature algorithm byte of Ed25519 in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;

/// The em dash that starts a signature line of a signed note.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The server's signing key and its name. The writer thread owns one and lends it to the engine.
pub struct Signer {
    key: SigningKey,
    public: PublicKey,
}

impl Signer {
    /// The key of a 32-byte Ed25519 seed. Its name is `fedcore-` and the first 8 hex characters
    /// of SHA-256 of the public key, so two servers' keys do not share a name.
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        let key = SigningKey::from_bytes(seed);
        let verifying = key.verifying_key();
        let digest = Sha256::digest(verifying.as_bytes());
        let name = format!("fedcore-{}", hex::encode(&digest[..4]));
        let public = PublicKey::new(name, verifying);
        Signer { key, public }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The private key as the key file holds it: `PRIVATE+KEY+<name>+<key id>+<base64>`.
    pub fn private_key_text(&self) -> String {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.public.name,
            self.public.key_id_hex(),
            BASE64.encode(bytes)
        )
    }

    /// Reads `private_key_text`'s format back; the name and key id must match the seed.
    pub fn parse_private(text: &str) -> Result<Signer, KeyError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| KeyError("a private key starts with PRIVATE+KEY+".into()))?;
        let (name, key_id, bytes) = split_key(rest)?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError("an Ed25519 seed is 32 bytes".into()))?;
        let signer = Signer::from_seed(&seed);
        if signer.public.name != name || signer.public.key_id_hex() != key_id {
            return Err(KeyError(
                "the key's name or id does not match its seed".into(),
            ));
        }
        Ok(signer)
    }

    /// The signature of a receipt: Ed25519 over the 32 raw bytes of its hash, as 128 hex chars.
    pub fn sign_hash(&self, hash: &str) -> Result<String, KeyError> {
        let bytes = hash_bytes(hash)?;
        Ok(hex::encode(self.key.sign(&bytes).to_bytes()))
    }

    /// The signature (128 hex chars) of the statement that this key signs every workflow receipt
    /// from audit seq `first_seq` on.
    pub fn sign_key_record(&self, first_seq: i64) -> String {
        let statement = key_record_statement(&self.public.name, first_seq);
        hex::encode(self.key.sign(statement.as_bytes()).to_bytes())
    }

    /// The signed C2SP checkpoint of the audit log at `seq` with head `entry_hash`, at time `at`.
    pub fn checkpoint_note(
        &self,
        seq: i64,
        entry_hash: &str,
        at: &str,
    ) -> Result<String, KeyError> {
        let text = checkpoint_text(&self.public.name, seq, &hash_bytes(entry_hash)?, at);
        let signature = self.key.sign(text.as_bytes());
        let mut signed = self.public.key_id.to_vec();
        signed.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.public.name,
            BASE64.encode(signed)
        ))
    }
}

/// A verifier key: name, key id and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub key_id: [u8; 4],
    key: VerifyingKey,
}

impl PublicKey {
    fn new(name: String, key: VerifyingKey) -> PublicKey {
        let key_id = key_id(&name, &key);
        PublicKey { name, key_id, key }
    }

    /// The key named `name` with the 32-byte public key written as 64 hex chars.
    pub fn from_hex(name: &str, public_key: &str) -> Result<PublicKey, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(public_key, &mut bytes)
            .map_err(|_| KeyError("a public key is 64 hex characters".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError("not an Ed25519 public key".into()))?;
        Ok(PublicKey::new(name.to_string(), key))
    }

    /// Parses a verifier key `<name>+<key id>+<base64(0x01 || public key)>`, as `key show` prints.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, key_id, bytes) = split_key(text.trim())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError("an Ed25519 public key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError("not an Ed25519 public key".into()))?;
        let public = PublicKey::new(name.to_string(), key);
        if public.key_id_hex() != key_id {
            return Err(KeyError(
                "the key id does not match the name and public key".into(),
            ));
        }
        Ok(public)
    }

    /// The key id as 8 hex chars: the first 4 bytes of SHA-256(name || "\n" || 0x01 || key).
    pub fn key_id_hex(&self) -> String {
        hex::encode(self.key_id)
    }

    /// The 32-byte public key as 64 hex chars.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// Whether `signature` (128 hex chars) signs the 32 raw bytes of `hash` under this key.
    pub fn verifies_hash(&self, hash: &str, signature: &str) -> bool {
        let (Ok(bytes), Some(signature)) = (hash_bytes(hash), parse_signature(signature)) else {
            return false;
        };
        self.key.verify_strict(&bytes, &signature).is_ok()
    }

    /// Whether `signature` signs `sign_key_record(first_seq)` under this key.
    pub fn verifies_key_record(&self, first_seq: i64, signature: &str) -> bool {
        let statement = key_record_statement(&self.name, first_seq);
        parse_signature(signature)
            .is_some_and(|s| self.key.verify_strict(statement.as_bytes(), &s).is_ok())
    }

    /// Opens a checkpoint note signed by this key: its signature line must name this key and
    /// verify, and its text must be a fedcore checkpoint. Returns what it states.
    pub fn open_checkpoint(&self, note: &str) -> Result<Checkpoint, String> {
        let split = note
            .rfind("\n\n")
            .ok_or("the note has no blank line before its signatures")?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        let mut verified = false;
        for line in signatures.lines() {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or("a signature line must start with an em dash")?;
            let (name, signed) = rest.split_once(' ').ok_or("a malformed signature line")?;
            if name != self.name {
                continue;
            }
            let signed = BASE64
                .decode(signed)
                .map_err(|_| "a signature that is not base64")?;
            if signed.len() != 68 || signed[..4] != self.key_id {
                continue;
            }
            let signature = Signature::from_slice(&signed[4..]).map_err(|e| e.to_string())?;
            if self.key.verify_strict(text.as_bytes(), &signature).is_err() {
                return Err(format!("the signature of {} does not verify", self.name));
            }
            verified = true;
        }
        if !verified {
            return Err(format!(
                "the note carries no signature by {} ({})",
                self.name,
                self.key_id_hex()
            ));
        }
        parse_checkpoint_text(text)
    }
}

impl fmt::Display for PublicKey {
    /// The verifier key: `<name>+<key id>+<base64(0x01 || public key)>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = vec![ALG_ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            self.key_id_hex(),
            BASE64.encode(bytes)
        )
    }
}

/// What a checkpoint states: the log's origin, its size (the head's `seq`), the head's
/// `entry_hash` and the time it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub seq: i64,
    pub entry_hash: String,
    pub at: String,
}

/// A key that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// The origin line of this key's checkpoints.
pub fn origin(key_name: &str) -> String {
    format!("fedcore/{key_name}")
}

/// What a key record signs: the key's name and the first audit seq it covers.
fn key_record_statement(key_name: &str, first_seq: i64) -> String {
    format!("fedcore signing key\n{key_name}\nfirst_seq {first_seq}\n")
}

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALG_ED25519]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// `<name>+<key id hex>+<base64(0x01 || bytes)>` → the parts, the algorithm byte checked.
fn split_key(text: &str) -> Result<(&str, &str, Vec<u8>), KeyError> {
    // The base64 key may itself hold `+`: only the first two separate fields.
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(key_id), Some(encoded)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError(
            "a key is written <name>+<key id>+<base64 key>".into(),
        ));
    };
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(KeyError("a key name is non-empty, without spaces".into()));
    }
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| KeyError("the key is not base64".into()))?;
    match bytes.split_first() {
        Some((&ALG_ED25519, rest)) => Ok((name, key_id, rest.to_vec())),
        _ => Err(KeyError("not an Ed25519 key (algorithm byte 0x01)".into())),
    }
}

fn hash_bytes(hash: &str) -> Result<[u8; 32], KeyError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hash, &mut bytes)
        .map_err(|_| KeyError(format!("{hash:?} is not a hash")))?;
    Ok(bytes)
}

fn parse_signature(text: &str) -> Option<Signature> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(Signature::from_bytes(&bytes))
}

/// The signed text of a checkpoint: origin, tree size, root hash, and a `time` extension line.
fn checkpoint_text(key_name: &str, seq: i64, root: &[u8; 32], at: &str) -> String {
    format!(
        "{}\n{seq}\n{}\ntime {at}\n",
        origin(key_name),
        BASE64.encode(root)
    )
}

fn parse_checkpoint_text(text: &str) -> Result<Checkpoint, String> {
    let lines: Vec<&str> = text.lines().collect();
    let [origin, size, root, time] = lines[..] else {
        return Err("a fedcore checkpoint has four lines: origin, size, root hash, time".into());
    };
    let seq: i64 = size
        .parse()
        .ok()
        .filter(|_| size.bytes().all(|b| b.is_ascii_digit()))
        .ok_or("the tree size is not a decimal number")?;
    let root = BASE64
        .decode(root)
        .ok()
        .filter(|r| r.len() == 32)
        .ok_or("the root hash is not 32 bytes of base64")?;
    let at = time
        .strip_prefix("time ")
        .ok_or("the extension line is not `time <timestamp>`")?;
    Ok(Checkpoint {
        origin: origin.to_string(),
        seq,
        entry_hash: hex::encode(root),
        at: at.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(byte: u8) -> Signer {
        Signer::from_seed(&[byte; 32])
    }

    #[test]
    fn keys_are_written_and_read_back() {
        let s = signer(7);
        let again = Signer::parse_private(&s.private_key_text()).unwrap();
        assert_eq!(again.public_key(), s.public_key());
        let public = PublicKey::parse(&s.public_key().to_string()).unwrap();
        assert_eq!(&public, s.public_key());
        assert!(public.name.starts_with("fedcore-"));
        let from_hex = PublicKey::from_hex(&public.name, &public.public_hex()).unwrap();
        assert_eq!(from_hex, public);
        let wrong_id = s.public_key().to_string().replacen('+', "+0", 1);
        assert!(PublicKey::parse(&wrong_id).is_err());
    }

    #[test]
    fn a_receipt_signature_verifies_only_under_its_key_and_hash() {
        let hash = "ab".repeat(32);
        let signature = signer(1).sign_hash(&hash).unwrap();
        assert!(signer(1).public_key().verifies_hash(&hash, &signature));
        assert!(!signer(2).public_key().verifies_hash(&hash, &signature));
        assert!(!signer(1)
            .public_key()
            .verifies_hash(&"cd".repeat(32), &signature));
    }

    #[test]
    fn a_checkpoint_is_a_c2sp_signed_note() {
        let s = signer(3);
        let hash = "0f".repeat(32);
        let note = s
            .checkpoint_note(42, &hash, "2026-01-02T03:04:05.000006Z")
            .unwrap();
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[0], format!("fedcore/{}", s.public_key().name));
        assert_eq!(lines[1], "42");
        assert_eq!(lines[2], BASE64.encode([0x0f; 32]));
        assert_eq!(lines[3], "time 2026-01-02T03:04:05.000006Z");
        assert_eq!(lines[4], "");
        assert!(lines[5].starts_with(&format!("\u{2014} {} ", s.public_key().name)));
        assert!(note.ends_with('\n'));
        let opened = s.public_key().open_checkpoint(&note).unwrap();
        assert_eq!(
            (opened.seq, opened.entry_hash.as_str()),
            (42, hash.as_str())
        );
        assert!(signer(4).public_key().open_checkpoint(&note).is_err());
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(s.public_key().open_checkpoint(&forged).is_err());
    }

    /// The key id rule of C2SP signed-note, checked against a key of Go's note package:
    /// `PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW`.
    #[test]
    fn the_key_id_matches_the_go_note_package() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let key = PublicKey::parse(vkey).unwrap();
        assert_eq!(key.key_id_hex(), "c74f20a3");
        assert_eq!(key.to_string(), vkey);
    }
}

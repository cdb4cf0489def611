//! The signing key file, kept outside the database: created on the first `serve` with mode 0600,
//! holding one line `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || 32-byte seed)>` (the private key
//! format of Go's `golang.org/x/mod/sumdb/note`), and read back on every later start. The seed
//! comes from the operating system's random source.

use crate::engine::signing::{KeyError, PublicKey, Signer};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a fedcore key file: {source}")]
    Bad { path: PathBuf, source: KeyError },
    #[error("{path} can be read by others (mode {mode:o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the OS random source failed: {0}")]
    Random(String),
}

/// The key file used when none is named: the database path with `.key` appended.
pub fn default_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".key");
    PathBuf::from(path)
}

/// Reads the key at `path`, or creates it (mode 0600, never overwriting) when there is none.
/// Returns the key and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(Signer, bool), KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let signer = Signer::from_seed(&seed);
    match create_new(path) {
        Ok(mut file) => {
            let io = |source| KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            };
            writeln!(file, "{}", signer.private_key_text()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok((signer, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((load(path)?, false)),
        Err(source) => Err(KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the key at `path`; refuses a file others may read.
pub fn load(path: &Path) -> Result<Signer, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    check_private(path, &metadata)?;
    let text = std::fs::read_to_string(path).map_err(io)?;
    Signer::parse_private(&text).map_err(|source| KeyFileError::Bad {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a public key given as text (as `key show` prints it) or as the path of a file whose
/// first line holds it.
pub fn read_public_key(text_or_path: &str) -> Result<PublicKey, String> {
    if let Ok(key) = PublicKey::parse(text_or_path) {
        return Ok(key);
    }
    let path = Path::new(text_or_path);
    if !path.is_file() {
        return Err(format!(
            "{text_or_path:?} is neither a public key (<name>+<key id>+<base64>) nor a file"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    PublicKey::parse(line).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(unix)]
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

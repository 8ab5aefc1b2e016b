//! The local API's bearer token: `<data dir>/api.token`, 32 random bytes in
//! unpadded base64url, readable by the owner only.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

/// File name of the token inside the data directory.
pub const TOKEN_FILE: &str = "api.token";

/// Shortest token accepted from an existing file (32 random bytes encode to 43).
const MIN_TOKEN_LEN: usize = 32;

/// Errors handling the token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file does not exist.
    #[error("no API token at {0}")]
    Missing(PathBuf),
    /// The file could not be read or written.
    #[error("cannot access the API token {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds something that is not a token.
    #[error("the API token file {0} is malformed (delete it and restart the daemon)")]
    Malformed(PathBuf),
}

/// Where the token lives for `data_dir`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the token a running daemon wrote.
pub fn read_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = token_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TokenError::Missing(path)),
        Err(source) => return Err(TokenError::Io { path, source }),
    };
    let token = text.trim();
    if !is_well_formed(token) {
        return Err(TokenError::Malformed(path));
    }
    Ok(token.to_owned())
}

/// Returns the existing token, or creates the file (mode 0600) with a new one.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, TokenError> {
    match read_token(data_dir) {
        Ok(token) => {
            restrict_permissions(&token_path(data_dir))?;
            return Ok(token);
        }
        Err(TokenError::Missing(_) | TokenError::Malformed(_)) => {}
        Err(e) => return Err(e),
    }
    let path = token_path(data_dir);
    let io_err = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(io_err)?;
    let token = generate_token();
    // Write a private temporary file, then rename it over the target, so
    // readers never see a partial token.
    let tmp = data_dir.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
    let mut file = open_private(&tmp).map_err(io_err)?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err)?;
    Ok(token)
}

/// A fresh random token.
pub fn generate_token() -> String {
    // `rand::random` draws from the thread-local CSPRNG, seeded by the OS.
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two tokens in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether `token` looks like one we wrote (long enough, base64url only).
fn is_well_formed(token: &str) -> bool {
    token.len() >= MIN_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Creates `path` afresh, readable and writable by the owner only.
#[cfg(unix)]
fn open_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates `path` afresh.
#[cfg(not(unix))]
fn open_private(path: &Path) -> io::Result<fs::File> {
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Makes an existing token file owner-only (0600) if it is not.
#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(io_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    }
    Ok(())
}

/// Nothing to restrict off Unix.
#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), TokenError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_and_private() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(matches!(
            read_token(dir.path()),
            Err(TokenError::Missing(_))
        ));
        let first = load_or_create_token(dir.path())?;
        assert_eq!(first.len(), 43);
        assert_eq!(load_or_create_token(dir.path())?, first);
        assert_eq!(read_token(dir.path())?, first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(token_path(dir.path()))?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        Ok(())
    }

    #[test]
    fn malformed_token_is_replaced() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(token_path(dir.path()), "short")?;
        assert!(matches!(
            read_token(dir.path()),
            Err(TokenError::Malformed(_))
        ));
        let token = load_or_create_token(dir.path())?;
        assert_eq!(token.len(), 43);
        Ok(())
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

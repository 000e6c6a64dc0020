//! Persistence (sled). In this version: the dialback secret (XEP-0185 §3: random on first
//! start, stable across restarts). Policy, outcomes and history trees come next.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path}: cannot create it: {err} (check server.data_dir)")]
    CreateDir { path: PathBuf, err: std::io::Error },
    #[error("data dir {path} is in use by another running drawbridge (or its lock is held): stop it or use another server.data_dir")]
    Locked { path: PathBuf },
    #[error("database in {path}: {msg}")]
    Db { path: PathBuf, msg: String },
}

pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

const SECRET_KEY: &[u8] = b"dialback_secret";

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|err| StoreError::CreateDir { path: data_dir.to_owned(), err })?;
        let path = data_dir.join("db");
        let db = sled::Config::new().path(&path).open().map_err(|e| match e {
            sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked { path: data_dir.to_owned() }
            }
            other => StoreError::Db { path: path.clone(), msg: other.to_string() },
        })?;
        Ok(Store { db, path })
    }

    /// The dialback secret: created once (32 random bytes), flushed before use.
    pub fn dialback_secret(&self) -> Result<Vec<u8>, StoreError> {
        let err = |e: sled::Error| StoreError::Db { path: self.path.clone(), msg: e.to_string() };
        let meta = self.db.open_tree("meta").map_err(err)?;
        if let Some(v) = meta.get(SECRET_KEY).map_err(err)? {
            return Ok(v.to_vec());
        }
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).expect("OS randomness");
        meta.insert(SECRET_KEY, secret.as_slice()).map_err(err)?;
        meta.flush().map_err(err)?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap().dialback_secret().unwrap();
        let b = Store::open(dir.path()).unwrap().dialback_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, Store::open(other.path()).unwrap().dialback_secret().unwrap());
    }

    #[test]
    fn locked_dir_is_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().expect("second open must fail");
        assert!(err.to_string().contains("in use by another running drawbridge"), "{err}");
    }
}

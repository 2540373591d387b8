//! Durable machine state: one JSON file per module, replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory), so a crash at any instant leaves
//! either the old or the new state, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use tandem_machine::Persisted;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is corrupt ({reason}); refusing to guess the data generation: move it away only if you know this node's copy is stale")]
    Corrupt { path: PathBuf, reason: String },
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store { path: dir.join("state.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Read { path: self.path.clone(), source: e }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { path: self.path.clone(), reason: e.to_string() })
    }

    pub fn save(&self, state: &Persisted) -> Result<(), StoreError> {
        let err = |source| StoreError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().expect("state file has a directory");
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(err)?;
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_machine::{FarmPersist, MirrorPersist};

    #[test]
    fn save_load_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(&dir.path().join("web"));
        assert!(s.load().unwrap().is_none());
        let mut p = MirrorPersist::fresh(true);
        p.started = true;
        s.save(&Persisted::Mirror(p.clone())).unwrap();
        assert_eq!(s.load().unwrap(), Some(Persisted::Mirror(p)));
        s.save(&Persisted::Farm(FarmPersist::default())).unwrap();
        assert!(matches!(s.load().unwrap(), Some(Persisted::Farm(_))));
        std::fs::write(s.path(), "{ half").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    }
}

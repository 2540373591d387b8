//! The lab state file, `/var/lib/tandem-lab/<lab>/lab.toml`.

use crate::error::{LabError, Result};
use crate::plan::LabSpec;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// A cut link: host `host`'s cable to network `network` is pulled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CutLink {
    pub host: String,
    pub network: u8,
}

/// What the lab remembers between commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Seconds since the Unix epoch when the lab was built.
    pub created_unix: u64,
    /// The cgroup v2 mount the lab's cgroups live under.
    pub cgroup_mount: PathBuf,
    /// True once `up` finished; false in a half-built lab (left by a crash during `up`).
    #[serde(default)]
    pub built: bool,
    /// Mount points this lab created on the machine (absent before `up`).
    #[serde(default)]
    pub created_mountpoints: Vec<PathBuf>,
    /// Hosts that are powered off (`kill` without `restart`).
    #[serde(default)]
    pub killed: Vec<String>,
    /// Links that are cut (`cut` without `heal`).
    #[serde(default)]
    pub cut: Vec<CutLink>,
    pub spec: LabSpec,
}

impl LabState {
    pub fn is_killed(&self, host: &str) -> bool {
        self.killed.iter().any(|h| h == host)
    }
    pub fn is_cut(&self, host: &str, network: u8) -> bool {
        self.cut.iter().any(|c| c.host == host && c.network == network)
    }

    pub fn load(lab: &str, path: &Path) -> Result<LabState> {
        let text = fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NotFound { lab: lab.to_string(), path: path.to_path_buf() }
            } else {
                LabError::io(lab, format!("reading {}", path.display()), e)
            }
        })?;
        toml::from_str(&text).map_err(|e| LabError::State {
            lab: lab.to_string(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the file atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let lab = &self.spec.name;
        let text = toml::to_string(self).map_err(|e| LabError::State {
            lab: lab.clone(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, text).map_err(|e| LabError::io(lab, format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| LabError::io(lab, format!("renaming {} to {}", tmp.display(), path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let st = LabState {
            created_unix: 42,
            built: true,
            cgroup_mount: "/sys/fs/cgroup".into(),
            created_mountpoints: vec!["/etc/tandem".into()],
            killed: vec!["n1".into()],
            cut: vec![CutLink { host: "n2".into(), network: 1 }],
            spec: LabSpec::new("x", 3).networks(2).private_dir("/srv/data"),
        };
        let dir = std::env::temp_dir().join(format!("tandem-lab-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("lab.toml");
        st.save(&p).unwrap();
        let back = LabState::load("x", &p).unwrap();
        assert_eq!(back, st);
        assert!(back.is_killed("n1") && !back.is_killed("n2"));
        assert!(back.is_cut("n2", 1) && !back.is_cut("n2", 0));
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(LabState::load("x", &p), Err(LabError::NotFound { .. })));
    }
}

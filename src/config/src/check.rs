//! `tandem config check`: validate several files together, telling cluster files from module
//! files, and cross-check them (module nodes against cluster nodes, module ids and names
//! across modules).

use crate::cluster::{parse_cluster, ClusterConfig};
use crate::error::{ConfigError, ConfigErrors};
use crate::module::{parse_module_spanned, ModuleConfig, ModuleSpans};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The two kinds of configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `cluster.toml`: has `key_file` and/or `[[network]]`.
    Cluster,
    /// `module.toml`: has a top-level `kind`.
    Module,
}

/// A file that parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// A cluster file.
    Cluster(ClusterConfig),
    /// A module file.
    Module(Box<ModuleConfig>),
}

impl Loaded {
    /// One-line description, e.g. `cluster "lab", 3 nodes` or `mirror module "web", id 1, nodes n1, n2`.
    pub fn summary(&self) -> String {
        match self {
            Loaded::Cluster(c) => format!(
                "cluster \"{}\", {} node{}, {} network{}",
                c.name,
                c.nodes.len(),
                if c.nodes.len() == 1 { "" } else { "s" },
                c.networks.len(),
                if c.networks.len() == 1 { "" } else { "s" }
            ),
            Loaded::Module(m) => format!(
                "{} module \"{}\", id {}, nodes {}",
                m.kind.as_str(),
                m.name,
                m.id,
                m.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The outcome for one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file, as given.
    pub path: PathBuf,
    /// The parsed configuration, or all the errors found in the file on its own.
    pub result: Result<Loaded, ConfigErrors>,
}

/// The outcome of [`check_files`].
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// One report per file, in the order given.
    pub files: Vec<FileReport>,
    /// Errors found by checking the files against each other (each points into one file).
    pub cross: Vec<ConfigError>,
}

impl CheckReport {
    /// True when no file has an error and the files agree with each other.
    pub fn is_ok(&self) -> bool {
        self.cross.is_empty() && self.files.iter().all(|f| f.result.is_ok())
    }

    /// Every error, file by file in the order given, each file's errors in line order.
    pub fn errors(&self) -> Vec<&ConfigError> {
        let mut out = Vec::new();
        for f in &self.files {
            if let Err(errs) = &f.result {
                out.extend(errs.iter());
            }
            let mut cross: Vec<&ConfigError> = self.cross.iter().filter(|e| e.file == f.path).collect();
            cross.sort_by_key(|e| (e.line, e.column));
            out.extend(cross);
        }
        out.extend(self.cross.iter().filter(|e| !self.files.iter().any(|f| f.path == e.file)));
        out
    }

    /// True when this file has no error of its own and no cross-file error.
    pub fn file_ok(&self, path: &Path) -> bool {
        self.files.iter().any(|f| f.path == path && f.result.is_ok()) && !self.cross.iter().any(|e| e.file == path)
    }

    /// Number of files with at least one error.
    pub fn files_with_errors(&self) -> usize {
        self.files.iter().filter(|f| !self.file_ok(&f.path)).count()
    }
}

/// Tells a cluster file from a module file by its top-level keys: `kind` makes a module;
/// otherwise `key_file`, `[[network]]` or `port_base` make a cluster; otherwise any other
/// module-only key (`id`, `[heartbeat]`, `[[vip]]`, ...) makes a module (missing its `kind`).
pub fn detect_kind(text: &str) -> Option<FileKind> {
    let doc = toml_edit::Document::parse(text.to_string()).ok()?;
    const MODULE_ONLY: &[&str] =
        &["kind", "id", "plugin", "heartbeat", "vip", "replication", "farm", "failover", "checker", "hooks"];
    const CLUSTER_ONLY: &[&str] = &["key_file", "network", "port_base"];
    if doc.contains_key("kind") {
        Some(FileKind::Module)
    } else if CLUSTER_ONLY.iter().any(|k| doc.contains_key(k)) {
        Some(FileKind::Cluster)
    } else if MODULE_ONLY.iter().any(|k| doc.contains_key(k)) {
        // A module file missing its `kind`: let the module parser say so.
        Some(FileKind::Module)
    } else {
        None
    }
}

/// Validates each file (cluster or module, told apart by [`detect_kind`]) and, when several are
/// given, cross-checks them: every module node must be a node of the cluster file (if one is
/// given), and module ids and names must be unique across the module files.
pub fn check_files(paths: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport::default();
    let mut clusters: Vec<(PathBuf, ClusterConfig)> = Vec::new();
    let mut modules: Vec<(PathBuf, ModuleConfig, ModuleSpans)> = Vec::new();
    let mut seen: Vec<&PathBuf> = Vec::new();
    for path in paths {
        // The same file given twice is checked once (it would clash with itself).
        if seen.contains(&path) {
            continue;
        }
        seen.push(path);
        let result = match crate::read_file(path) {
            Err(e) => Err(e),
            Ok(text) => match detect_kind(&text) {
                Some(FileKind::Cluster) => parse_cluster(path, &text).map(|c| {
                    clusters.push((path.clone(), c.clone()));
                    Loaded::Cluster(c)
                }),
                Some(FileKind::Module) => parse_module_spanned(path, &text).map(|(m, spans)| {
                    modules.push((path.clone(), m.clone(), spans));
                    Loaded::Module(Box::new(m))
                }),
                None if toml_edit::Document::parse(text.clone()).is_err() => {
                    // Syntax error: let the parser report it with its position.
                    parse_module_spanned(path, &text).map(|(m, _)| Loaded::Module(Box::new(m)))
                }
                None => Err(ConfigErrors(vec![ConfigError {
                    file: path.clone(),
                    line: 1,
                    column: 1,
                    key: String::new(),
                    message: "cannot tell whether this is a cluster or a module file: a module file has a \
                              top-level `kind` (\"mirror\" or \"farm\"); a cluster file has `key_file` and \
                              [[network]] tables"
                        .into(),
                }])),
            },
        };
        report.files.push(FileReport { path: path.clone(), result });
    }

    let err = |file: &Path, (line, column): (usize, usize), key: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: key.to_string(),
        message,
    };

    // Several cluster files: only the first is used.
    for (path, _) in clusters.iter().skip(1) {
        report.cross.push(err(
            path,
            (1, 1),
            "",
            format!(
                "only one cluster file can be checked at a time; {} is already the cluster file",
                clusters[0].0.display()
            ),
        ));
    }

    // Module nodes against cluster nodes.
    if let Some((cpath, cluster)) = clusters.first() {
        for (mpath, m, spans) in &modules {
            for (i, node) in m.nodes.iter().enumerate() {
                if cluster.node(&node.name).is_none() {
                    let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                    report.cross.push(err(
                        mpath,
                        spans.nodes[i],
                        &format!("node[{i}].name"),
                        format!(
                            "node \"{}\" is not a node of cluster \"{}\" ({}: {})",
                            node.name,
                            cluster.name,
                            cpath.display(),
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
    }

    // Module ids and names across modules.
    let mut ids: HashMap<u8, (&Path, &str)> = HashMap::new();
    let mut names: HashMap<&str, &Path> = HashMap::new();
    for (mpath, m, spans) in &modules {
        match ids.get(&m.id) {
            Some((first, first_name)) => report.cross.push(err(
                mpath,
                spans.id,
                "id",
                format!(
                    "module id {} is already used by module \"{}\" in {}; module ids must be unique in the cluster",
                    m.id,
                    first_name,
                    first.display()
                ),
            )),
            None => {
                ids.insert(m.id, (mpath, &m.name));
            }
        }
        match names.get(m.name.as_str()) {
            Some(first) => report.cross.push(err(
                mpath,
                spans.name,
                "name",
                format!(
                    "module name \"{}\" is already used in {}; module names must be unique in the cluster",
                    m.name,
                    first.display()
                ),
            )),
            None => {
                names.insert(&m.name, mpath);
            }
        }
    }
    report
}

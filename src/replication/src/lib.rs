//! Synchronous replication of directories (mirror modules). Work in progress: see issue 4 and
//! docs/replication.md.

pub mod op;

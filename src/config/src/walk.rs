//! A small validating walker over a span-preserving `toml_edit` parse. It records every error
//! with its exact position and key path and keeps going, so that one run reports all the
//! problems of a file.

use crate::error::ConfigError;
use crate::units;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use toml_edit::{Item, Value};

/// Where the errors go, and how byte offsets become line:column.
pub(crate) struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    pub errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx { file, text, line_starts, errors: Vec::new() }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub fn loc(&self, off: usize) -> (usize, usize) {
        let off = off.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= off) - 1;
        let start = self.line_starts[line];
        let col = self.text.get(start..off).map(|s| s.chars().count()).unwrap_or(off - start);
        (line + 1, col + 1)
    }

    pub fn error(&mut self, off: usize, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.loc(off);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// Sorted errors (by position, stable), consuming the context.
    pub fn into_errors(self) -> Vec<ConfigError> {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        errors
    }
}

/// "a string", "an integer", ... for messages about wrong types.
pub(crate) fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "a table",
        },
    }
}

/// A value with the byte offset where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    pub val: T,
    pub off: usize,
}

/// One key of a table: its name, where the key is written, and its item.
#[derive(Clone, Copy)]
pub(crate) struct Entry<'d> {
    pub name: &'d str,
    pub key_off: usize,
    pub item: &'d Item,
}

impl Entry<'_> {
    /// Offset of the value (falls back to the key).
    pub fn off(&self) -> usize {
        self.item.span().map(|s| s.start).unwrap_or(self.key_off)
    }
}

/// A table (a `[header]` table, an `[[array]]` entry, a dotted table or an inline table) being
/// validated.
pub(crate) struct Tbl<'d> {
    /// Key path of the table ("" for the document root, `heartbeat`, `node[1]`).
    pub path: String,
    /// How messages name it: "[heartbeat]", "[[node]]", "the top level".
    pub label: String,
    /// Offset of the header (or of the inline table); errors about missing keys point here.
    pub off: usize,
    pub entries: Vec<Entry<'d>>,
}

impl<'d> Tbl<'d> {
    /// Views an item as a table; `None` if it is not one.
    pub fn of(item: &'d Item, path: String, label: String, fallback_off: usize) -> Option<Self> {
        let off = item.span().map(|s| s.start).unwrap_or(fallback_off);
        let mut entries = Vec::new();
        match item {
            Item::Table(t) => {
                for (name, it) in t.iter() {
                    let key_off = t.key(name).and_then(|k| k.span()).map(|s| s.start).unwrap_or(off);
                    entries.push(Entry { name, key_off, item: it });
                }
            }
            Item::Value(Value::InlineTable(t)) => {
                for (name, _) in t.iter() {
                    if let Some((k, it)) = t.get_key_value(name) {
                        let key_off = k.span().map(|s| s.start).unwrap_or(off);
                        entries.push(Entry { name, key_off, item: it });
                    }
                }
            }
            _ => return None,
        }
        Some(Tbl { path, label, off, entries })
    }

    pub fn get(&self, key: &str) -> Option<Entry<'d>> {
        self.entries.iter().find(|e| e.name == key).copied()
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Full key path of one of this table's keys.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reports every key that is not in `allowed`, with the closest allowed key as a suggestion.
    /// `elsewhere` lists keys that exist but do not apply here, with an explanation each.
    pub fn check_keys(&self, ctx: &mut Ctx, allowed: &[&str], elsewhere: &[(&str, &str)]) {
        for e in &self.entries {
            if allowed.contains(&e.name) {
                continue;
            }
            if let Some((_, why)) = elsewhere.iter().find(|(k, _)| *k == e.name) {
                ctx.error(e.key_off, self.key_path(e.name), format!("key `{}` {why}", e.name));
                continue;
            }
            let msg = match units::suggest(e.name, allowed) {
                Some(s) => format!("unknown key `{}` in {}; did you mean `{s}`?", e.name, self.label),
                None => format!(
                    "unknown key `{}` in {}; valid keys are: {}",
                    e.name,
                    self.label,
                    allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            };
            ctx.error(e.key_off, self.key_path(e.name), msg);
        }
    }

    /// Reports a missing required key at the table header.
    pub fn missing(&self, ctx: &mut Ctx, key: &str, hint: &str) {
        ctx.error(self.off, self.key_path(key), format!("missing required key `{key}` in {}{hint}", self.label));
    }

    fn wrong_type(&self, ctx: &mut Ctx, e: &Entry, expected: &str) {
        ctx.error(e.off(), self.key_path(e.name), format!("expected {expected}, found {}", type_name(e.item)));
    }

    /// A string value, `None` (with an error) if it has another type.
    pub fn str(&self, ctx: &mut Ctx, key: &str, expected: &str) -> Option<Sp<String>> {
        let e = self.get(key)?;
        match e.item.as_str() {
            Some(s) => Some(Sp { val: s.to_string(), off: e.off() }),
            None => {
                self.wrong_type(ctx, &e, expected);
                None
            }
        }
    }

    /// Like [`Tbl::str`] but reports the key as missing when absent.
    pub fn req_str(&self, ctx: &mut Ctx, key: &str, expected: &str) -> Option<Sp<String>> {
        if !self.has(key) {
            self.missing(ctx, key, "");
            return None;
        }
        self.str(ctx, key, expected)
    }

    pub fn bool(&self, ctx: &mut Ctx, key: &str) -> Option<Sp<bool>> {
        let e = self.get(key)?;
        match e.item.as_bool() {
            Some(b) => Some(Sp { val: b, off: e.off() }),
            None => {
                self.wrong_type(ctx, &e, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(&self, ctx: &mut Ctx, key: &str, min: i64, max: i64) -> Option<Sp<i64>> {
        let e = self.get(key)?;
        match e.item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(Sp { val: n, off: e.off() }),
            Some(n) => {
                ctx.error(
                    e.off(),
                    self.key_path(key),
                    format!("{n} is out of range: expected an integer from {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(ctx, &e, &format!("an integer from {min} to {max}"));
                None
            }
        }
    }

    /// A duration string (`"500ms"`, `"1s"`, ...).
    pub fn duration(&self, ctx: &mut Ctx, key: &str) -> Option<Sp<Duration>> {
        let s = self.str(ctx, key, "a duration string such as \"1s\" or \"500ms\"")?;
        match units::parse_duration(&s.val) {
            Ok(d) => Some(Sp { val: d, off: s.off }),
            Err(m) => {
                ctx.error(s.off, self.key_path(key), m);
                None
            }
        }
    }

    /// A duration that must not be zero.
    pub fn positive_duration(&self, ctx: &mut Ctx, key: &str) -> Option<Sp<Duration>> {
        let d = self.duration(ctx, key)?;
        if d.val.is_zero() {
            ctx.error(d.off, self.key_path(key), "must be greater than zero");
            return None;
        }
        Some(d)
    }

    /// A size string (`"1MiB"`).
    pub fn size(&self, ctx: &mut Ctx, key: &str) -> Option<Sp<u64>> {
        let s = self.str(ctx, key, "a size string such as \"1MiB\"")?;
        match units::parse_size(&s.val) {
            Ok(n) => Some(Sp { val: n, off: s.off }),
            Err(m) => {
                ctx.error(s.off, self.key_path(key), m);
                None
            }
        }
    }

    /// An IP address string (no prefix).
    pub fn ip(&self, ctx: &mut Ctx, key: &str) -> Option<Sp<IpAddr>> {
        let s = self.str(ctx, key, "an IP address string such as \"198.18.0.1\"")?;
        parse_ip(ctx, &self.key_path(key), &s)
    }

    /// A name following [`units::check_name`].
    pub fn name(&self, ctx: &mut Ctx, key: &str, required: bool) -> Option<Sp<String>> {
        let s = if required {
            self.req_str(ctx, key, "a name string such as \"n1\"")?
        } else {
            self.str(ctx, key, "a name string such as \"n1\"")?
        };
        match units::check_name(&s.val) {
            Ok(()) => Some(s),
            Err(m) => {
                ctx.error(s.off, self.key_path(key), m);
                None
            }
        }
    }

    /// One of a fixed set of string values.
    pub fn choice(&self, ctx: &mut Ctx, key: &str, choices: &[&str]) -> Option<Sp<String>> {
        let listed = choices.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        let s = self.str(ctx, key, &format!("one of the strings {listed}"))?;
        if choices.contains(&s.val.as_str()) {
            return Some(s);
        }
        let hint = units::suggest(&s.val, choices).map(|c| format!("; did you mean \"{c}\"?")).unwrap_or_default();
        ctx.error(s.off, self.key_path(key), format!("invalid value \"{}\": expected one of {listed}{hint}", s.val));
        None
    }

    /// An array of strings (each with its position); `None` with an error for another type.
    pub fn str_array(&self, ctx: &mut Ctx, key: &str, what: &str) -> Option<Sp<Vec<Sp<String>>>> {
        let e = self.get(key)?;
        let Some(arr) = e.item.as_array() else {
            self.wrong_type(ctx, &e, &format!("an array of {what}"));
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in arr.iter().enumerate() {
            let off = v.span().map(|s| s.start).unwrap_or(e.off());
            match v.as_str() {
                Some(s) => out.push(Sp { val: s.to_string(), off }),
                None => {
                    ctx.error(
                        off,
                        format!("{}[{i}]", self.key_path(key)),
                        format!("expected {what}, found {}", type_name(&Item::Value(v.clone()))),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(Sp { val: out, off: e.off() })
    }

    /// A sub-table (`[a.b]`, `a.b = ...` or `b = { ... }`); `None` if absent or not a table.
    pub fn table(&self, ctx: &mut Ctx, key: &str) -> Option<Tbl<'d>> {
        let e = self.get(key)?;
        let path = self.key_path(key);
        let label = format!("[{path}]");
        match Tbl::of(e.item, path, label, e.key_off) {
            Some(t) => Some(t),
            None => {
                self.wrong_type(ctx, &e, &format!("a table ([{}])", self.key_path(key)));
                None
            }
        }
    }

    /// The entries of an array of tables (`[[key]]` or `key = [{...}, ...]`); empty if absent.
    pub fn tables(&self, ctx: &mut Ctx, key: &str) -> Vec<Tbl<'d>> {
        let Some(e) = self.get(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let label = format!("[[{path}]]");
        let mut out = Vec::new();
        match e.item {
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let off = t.span().map(|s| s.start).unwrap_or(e.key_off);
                    let mut entries = Vec::new();
                    for (name, it) in t.iter() {
                        let key_off = t.key(name).and_then(|k| k.span()).map(|s| s.start).unwrap_or(off);
                        entries.push(Entry { name, key_off, item: it });
                    }
                    out.push(Tbl { path: format!("{path}[{i}]"), label: label.clone(), off, entries });
                }
            }
            Item::Value(Value::Array(arr)) => {
                for (i, v) in arr.iter().enumerate() {
                    let item = Item::Value(v.clone());
                    let off = v.span().map(|s| s.start).unwrap_or(e.off());
                    if let Value::InlineTable(t) = v {
                        let mut entries = Vec::new();
                        for (name, _) in t.iter() {
                            if let Some((k, it)) = t.get_key_value(name) {
                                let key_off = k.span().map(|s| s.start).unwrap_or(off);
                                entries.push(Entry { name, key_off, item: it });
                            }
                        }
                        out.push(Tbl { path: format!("{path}[{i}]"), label: label.clone(), off, entries });
                    } else {
                        ctx.error(off, format!("{path}[{i}]"), format!("expected a table, found {}", type_name(&item)));
                    }
                }
            }
            other => {
                ctx.error(
                    e.off(),
                    path.clone(),
                    format!("expected an array of tables (write [[{path}]] headers), found {}", type_name(other)),
                );
            }
        }
        out
    }
}

pub(crate) fn parse_ip(ctx: &mut Ctx, key: &str, s: &Sp<String>) -> Option<Sp<IpAddr>> {
    match s.val.parse::<IpAddr>() {
        Ok(ip) => Some(Sp { val: ip, off: s.off }),
        Err(_) => {
            let hint = if s.val.contains('/') { " (write it without a prefix length)" } else { "" };
            ctx.error(s.off, key, format!("invalid IP address \"{}\"{hint}", s.val));
            None
        }
    }
}

/// Parses the text; on a TOML syntax error reports it and returns `None`.
pub(crate) fn parse_doc(ctx: &mut Ctx, text: &str) -> Option<toml_edit::Document<String>> {
    match toml_edit::Document::parse(text.to_string()) {
        Ok(d) => Some(d),
        Err(e) => {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            ctx.error(off, "", format!("TOML syntax error: {}", e.message().trim()));
            None
        }
    }
}

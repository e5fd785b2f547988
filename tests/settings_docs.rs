//! Every settings key is written down twice for operators: in `config/ftpsgate.toml`, the example
//! they copy, and in `docs/configuration.md`, the reference. A key added to the settings but to
//! neither file is a key nobody finds, so these tests fail until both have it.
//!
//! The keys come from the settings types themselves, not from a list kept by hand (which would
//! go stale exactly as the docs do). serde's derive hands every struct's field names, aliases
//! included, to `Deserializer::deserialize_struct`; [`Probe`] is a deserializer that records
//! them instead of reading anything. Serializing `Settings::default()` would miss every `Option`
//! that is `None` by default (`tls.cert`, `audit.log`, ...) and every empty map (`routes`);
//! asking the derive misses nothing. No network, no files but the two checked.

// A test, where a panic is the report (Cargo.toml denies these in the gateway).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ftpsgate::config::Settings;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess};
use serde::Deserialize;

/// What a key holds, as far as documenting it goes.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A struct: a TOML table of its own (`[tls]`), or with `array`, an array of tables
    /// (`[[tls.sni]]`). `ty` is the Rust type, so a type used in two places (`[backend]` and
    /// `[routes.NAME]` are both `BackendSettings`) is recognised as one.
    Table {
        ty: &'static str,
        fields: &'static [&'static str],
        array: bool,
    },
    /// A map whose keys the operator names: `[routes.NAME]`.
    Named,
    /// Anything else: a value written on one line (`idle_secs = 300`, `allow = []`).
    Value,
}

/// The segment that stands for any name in a [`Shape::Named`] map, as docs/configuration.md
/// writes it (`routes.NAME.sni`).
const ANY_NAME: &str = "NAME";

/// One key: where it is (`["timeouts", "idle_secs"]`), what it holds, and the type of the table
/// it is a field of (`None` for a map's entries).
#[derive(Debug)]
struct Key {
    path: Vec<String>,
    shape: Shape,
    parent_ty: Option<&'static str>,
}

impl Key {
    fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// What must be documented once: a field of a type used in several tables is documented
    /// under any one of them (`backend.tls` also documents `routes.NAME.tls`, and `sni`, which
    /// only a route may set, is documented under `[routes.NAME]`).
    fn subject(&self) -> String {
        match (self.parent_ty, self.path.last()) {
            (Some(ty), Some(field)) => format!("{ty}::{field}"),
            _ => self.dotted(),
        }
    }
}

/// Why a [`Probe`] stopped: it always does, once it has seen what it came for.
#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

/// A deserializer that walks down `path` through the settings types and records the shape of
/// what it finds at the end. Along the way it offers each struct or map the one key the path
/// names, so the derive deserializes just that field, with a `Probe` one level deeper. At the
/// end it records and stops with an error, which the derive passes straight back up: nothing
/// is ever built, so no value needs to be valid (a `PortRange` of nothing would not be).
/// `Option`s and sequences are looked through (`Option<PathBuf>` is its path, `Vec<CertPair>`
/// its `CertPair` table), as TOML does.
#[derive(Clone, Copy)]
struct Probe<'a> {
    path: &'a [String],
    depth: usize,
    in_array: bool,
    seen: &'a RefCell<Option<Shape>>,
}

impl<'a> Probe<'a> {
    fn at_end(&self) -> bool {
        self.depth == self.path.len()
    }

    fn record(&self, shape: Shape) -> Stop {
        *self.seen.borrow_mut() = Some(shape);
        Stop("recorded".into())
    }

    /// The next key of the path, or why there is none.
    fn next_key(&self) -> Result<&'a str, Stop> {
        self.path
            .get(self.depth)
            .map(String::as_str)
            .ok_or_else(|| Stop("path ended".into()))
    }

    fn deeper(self) -> Probe<'a> {
        Probe {
            depth: self.depth + 1,
            in_array: false,
            ..self
        }
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    /// Every value that is not a table, a map, a sequence or an option ends up here.
    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        if self.at_end() {
            Err(self.record(Shape::Value))
        } else {
            Err(Stop(format!("a value has no key `{}`", self.next_key()?)))
        }
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(OneElement(Some(Probe {
            in_array: true,
            ..self
        })))
    }

    fn deserialize_map<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.record(Shape::Named));
        }
        visitor.visit_map(OneEntry {
            key: Some(self.next_key()?),
            value: self.deeper(),
        })
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        ty: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.record(Shape::Table {
                ty,
                fields,
                array: self.in_array,
            }));
        }
        visitor.visit_map(OneEntry {
            key: Some(self.next_key()?),
            value: self.deeper(),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// A sequence of one element, so the element's type shows itself.
struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        self.0.take().map(|p| seed.deserialize(p)).transpose()
    }
}

/// A table or map with the one key the path names.
struct OneEntry<'a> {
    key: Option<&'a str>,
    value: Probe<'a>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        self.key
            .take()
            .map(|k| seed.deserialize(IntoDeserializer::<Stop>::into_deserializer(k)))
            .transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(self.value)
    }
}

/// The shape of what `path` names in `Settings`.
fn shape_at(path: &[String]) -> Shape {
    let seen = RefCell::new(None);
    let stopped = Settings::deserialize(Probe {
        path,
        depth: 0,
        in_array: false,
        seen: &seen,
    });
    assert!(stopped.is_err(), "the probe always stops");
    seen.into_inner().unwrap_or_else(|| {
        let why = stopped.err().map(|e| e.0).unwrap_or_default();
        panic!("nothing found at `{}`: {why}", path.join("."))
    })
}

/// Every key of `Settings`, tables and their fields, walked down from the top and sorted.
fn settings_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    let mut to_visit = vec![(Vec::<String>::new(), shape_at(&[]))];
    while let Some((path, shape)) = to_visit.pop() {
        let children: Vec<(String, Option<&'static str>)> = match shape {
            Shape::Table { ty, fields, .. } => {
                fields.iter().map(|f| (f.to_string(), Some(ty))).collect()
            }
            Shape::Named => vec![(ANY_NAME.to_string(), None)],
            Shape::Value => Vec::new(),
        };
        for (name, parent_ty) in children {
            let mut child = path.clone();
            child.push(name);
            let shape = shape_at(&child);
            to_visit.push((child.clone(), shape));
            keys.push(Key {
                path: child,
                shape,
                parent_ty,
            });
        }
    }
    keys.sort_by_key(Key::dotted);
    keys
}

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Keys grouped by what must be documented once ([`Key::subject`]), each with its paths.
fn subjects(keys: &[Key], wanted: impl Fn(&Key) -> bool) -> BTreeMap<String, Vec<&Key>> {
    let mut by_subject: BTreeMap<String, Vec<&Key>> = BTreeMap::new();
    for key in keys.iter().filter(|k| wanted(k)) {
        by_subject.entry(key.subject()).or_default().push(key);
    }
    by_subject
}

/// The subjects none of whose paths `documented` accepts, each as `a` or `a / b`, in order.
fn missing(
    keys: &[Key],
    wanted: impl Fn(&Key) -> bool,
    documented: impl Fn(&Key) -> bool,
) -> Vec<String> {
    let mut missing: Vec<String> = subjects(keys, wanted)
        .into_values()
        .filter(|paths| !paths.iter().any(|k| documented(k)))
        .map(|paths| {
            paths
                .iter()
                .map(|k| k.dotted())
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .collect();
    missing.sort();
    missing
}

/// `[a.b]`, `[[a.b]]`, `# [a.b]` or `# [[a.b]]` on a line of its own (a trailing comment
/// allowed): the table's path.
fn toml_header(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start().trim_start_matches('#').trim();
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let (name, rest) = inner.split_once(']')?;
    let rest = rest.trim_start_matches(']').trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let path: Vec<String> = name.split('.').map(|s| s.trim().to_string()).collect();
    path.iter()
        .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(path)
}

/// `key = ...` or `# key = ...`: the key.
fn toml_key(line: &str) -> Option<&str> {
    let line = line.trim_start().trim_start_matches('#').trim_start();
    let (key, _) = line.split_once('=')?;
    let key = key.trim_end();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(key)
}

/// Whether a path written in a file (`routes.sales`) is the path of a key (`routes.NAME`).
fn same_table(written: &[String], key: &[String]) -> bool {
    written.len() == key.len()
        && written
            .iter()
            .zip(key)
            .all(|(w, k)| k == ANY_NAME || w == k)
}

/// Every (table, key) the file sets or shows commented out, and every table header.
fn toml_entries(text: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let (mut entries, mut headers) = (Vec::new(), Vec::new());
    let mut table = Vec::new();
    for line in text.lines() {
        if let Some(header) = toml_header(line) {
            table = header.clone();
            headers.push(header);
        } else if let Some(key) = toml_key(line) {
            let mut entry = table.clone();
            entry.push(key.to_string());
            entries.push(entry);
        }
    }
    (entries, headers)
}

/// The walk itself must find the keys, or the two tests below would pass on nothing.
#[test]
fn the_walk_finds_every_kind_of_key() {
    let keys = settings_keys();
    let dotted: Vec<String> = keys.iter().map(Key::dotted).collect();
    for expected in [
        "greeting",
        "timeouts.idle_secs",
        "tls.cert",
        "tls.client_ca",
        "tls.sni",
        "tls.sni.cert",
        "backend.address",
        "backend.addresses",
        "routes",
        "routes.NAME",
        "routes.NAME.sni",
        "access.deny_users",
        "audit.log",
    ] {
        assert!(
            dotted.iter().any(|d| d == expected),
            "{expected} in {dotted:?}"
        );
    }
    let sni = keys
        .iter()
        .find(|k| k.dotted() == "tls.sni")
        .expect("tls.sni");
    assert!(
        matches!(sni.shape, Shape::Table { array: true, .. }),
        "{sni:?}"
    );
}

/// Each key appears in the example configuration under its table: set (`idle_secs = 300`),
/// commented out (`# cert = "/etc/ftpsgate/cert.pem"`, an example of a key without a default
/// value), or as the header of a table it is (`[[tls.sni]]`, `# [routes.sales]`).
#[test]
fn every_settings_key_is_in_the_example_config() {
    let keys = settings_keys();
    let (entries, headers) = toml_entries(&read("config/ftpsgate.toml"));
    let documented = |key: &Key| {
        entries.iter().any(|e| same_table(e, &key.path))
            || headers
                .iter()
                .any(|h| h.len() >= key.path.len() && same_table(&h[..key.path.len()], &key.path))
    };
    let missing = missing(&keys, |_| true, documented);
    assert!(
        missing.is_empty(),
        "config/ftpsgate.toml lacks these settings keys (set or shown commented out, under \
         their table):\n  {}",
        missing.join("\n  ")
    );
}

/// Each key that holds values (not a table of keys, each checked on its own) is named in the
/// first column of a table row of docs/configuration.md, as `` `timeouts.idle_secs` `` (a
/// route's as `` `routes.NAME.sni` ``): the reference, with its flag, variable and default.
#[test]
fn every_settings_key_is_in_the_configuration_reference() {
    let keys = settings_keys();
    let docs = read("docs/configuration.md");
    let first_cells: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.trim().strip_prefix('|')?.split('|').next())
        .collect();
    let holds_values = |key: &Key| match key.shape {
        Shape::Value => true,
        Shape::Table { array, .. } => array,
        Shape::Named => false,
    };
    let documented = |key: &Key| {
        let quoted = format!("`{}`", key.dotted());
        first_cells.iter().any(|cell| cell.contains(&quoted))
    };
    let missing = missing(&keys, holds_values, documented);
    assert!(
        missing.is_empty(),
        "docs/configuration.md's reference has no row for these settings keys:\n  {}",
        missing.join("\n  ")
    );
}

//! Reading a source template field by field: every field read is removed, so
//! what is left at the end is exactly what was not mapped, and every remark
//! is kept as a [`Note`] in the order the fields were read.

use serde_json::{Map, Value};

use super::Note;

/// The source fields not consumed yet, and the notes so far.
pub(super) struct Cursor {
    /// Fields not read yet; what is left at the end is reported as not mapped.
    pub(super) rest: Map<String, Value>,
    /// What happened to the fields read so far, in the order they were read.
    pub(super) notes: Vec<Note>,
}

impl Cursor {
    /// A cursor over all of `source`, with no notes yet.
    pub(super) fn new(source: &Map<String, Value>) -> Cursor {
        Cursor {
            rest: source.clone(),
            notes: vec![],
        }
    }

    /// Consumes `field`; a JSON null counts as absent.
    pub(super) fn take(&mut self, field: &str) -> Option<Value> {
        self.rest.remove(field).filter(|v| !v.is_null())
    }

    /// Records what happened to `field`.
    pub(super) fn note(&mut self, field: &str, message: impl Into<String>) {
        self.notes.push(Note {
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// A string field (numbers and booleans are accepted as their text).
    pub(super) fn string(&mut self, field: &str) -> Option<String> {
        match self.take(field)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.note(field, format!("expected a string, got {other}; not mapped"));
                None
            }
        }
    }

    /// A list field, given as a JSON list or a comma-separated string.
    pub(super) fn list(&mut self, field: &str) -> Vec<String> {
        match self.take(field) {
            None => vec![],
            Some(Value::String(s)) => split(&s, ','),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::trim).filter(|s| !s.is_empty()))
                .map(String::from)
                .collect(),
            Some(other) => {
                self.note(field, format!("expected a list, got {other}; not mapped"));
                vec![]
            }
        }
    }
}

/// The non-empty, trimmed parts of `s`.
pub(super) fn split(s: &str, sep: char) -> Vec<String> {
    s.split(sep)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// `items` without repeats, first occurrence kept.
pub(super) fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

//! The output: the merged result written as one JSON object, its big lists' entries copied with
//! their `item_index` spliced in, and the caller's section as one more field.
use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{
    MergeError,
    json::{is_ws, push_u64},
};

/// One entry of a merged list: its text (borrowed from the batch) and how its `item_index` is
/// rewritten on output.
#[derive(Debug)]
pub(super) struct Entry<'a> {
    pub(super) text: Cow<'a, str>,
    pub(super) patch: Patch,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Patch {
    /// Copied unchanged.
    Keep,
    /// The bytes `at .. at + len` (the old `item_index` value) become `index`.
    Replace { at: usize, len: usize, index: u64 },
    /// `"item_index":index` is inserted after the opening brace.
    Insert { index: u64 },
}

impl Entry<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let text = self.text.as_bytes();
        match self.patch {
            Patch::Keep => out.extend_from_slice(text),
            Patch::Replace { at, len, index } => {
                let (head, rest) = text.split_at_checked(at).unwrap_or((text, &[]));
                out.extend_from_slice(head);
                push_u64(out, index);
                out.extend_from_slice(rest.get(len..).unwrap_or_default());
            }
            Patch::Insert { index } => {
                let body = text.get(1..).unwrap_or_default();
                out.extend_from_slice(b"{\"item_index\":");
                push_u64(out, index);
                if body.iter().find(|c| !is_ws(**c)) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(body);
            }
        }
    }
}

/// A merged result: its small fields, and its big lists as per-batch entries.
#[derive(Debug, Default)]
pub(super) struct Merged<'a> {
    pub(super) fields: Map<String, Value>,
    pub(super) lists: Vec<(&'static str, Vec<Vec<Entry<'a>>>)>,
}

/// One top-level field of the output.
enum Piece<'m, 'a> {
    Value(&'m Value),
    List(&'m [Vec<Entry<'a>>]),
}

impl Merged<'_> {
    /// Writes the result as one JSON object, keys in sorted order; `section` is one more field.
    pub(super) fn write(self, section: Option<(&str, &Value)>) -> Result<Vec<u8>, MergeError> {
        let output = |source| MergeError::Output { source };
        let mut fields: Vec<(&str, Piece<'_, '_>)> = Vec::with_capacity(self.fields.len() + 4);
        let taken = |key: &str| {
            section.is_some_and(|(name, _)| name == key)
                || self.lists.iter().any(|(name, _)| *name == key)
        };
        for (key, value) in &self.fields {
            if !taken(key) {
                fields.push((key, Piece::Value(value)));
            }
        }
        for (name, parts) in &self.lists {
            if section.is_none_or(|(key, _)| key != *name) {
                fields.push((name, Piece::List(parts)));
            }
        }
        if let Some((key, value)) = section {
            fields.push((key, Piece::Value(value)));
        }
        fields.sort_by(|a, b| a.0.cmp(b.0));

        let list_bytes: usize = self
            .lists
            .iter()
            .flat_map(|(_, parts)| parts)
            .flatten()
            .map(|e| e.text.len() + 24)
            .sum();
        let mut out = Vec::with_capacity(list_bytes + 64 * 1024);
        out.push(b'{');
        for (i, (key, piece)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, key).map_err(output)?;
            out.push(b':');
            match piece {
                Piece::Value(value) => serde_json::to_writer(&mut out, value).map_err(output)?,
                Piece::List(parts) => {
                    out.push(b'[');
                    for (j, entry) in parts.iter().flatten().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        entry.write(&mut out);
                    }
                    out.push(b']');
                }
            }
        }
        out.push(b'}');
        Ok(out)
    }
}

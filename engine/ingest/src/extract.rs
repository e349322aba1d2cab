//! Extracting a JSON record's values: the schema's paths as a trie, and a serde visitor that
//! walks a record once, storing the value found at each path in its slot, descending only
//! into keys some path needs and skipping every other value without building it.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::convert::Raw;

/// The schema's paths as a trie: a record is walked once, descending only into keys some path
/// needs and skipping every other value without building it.
#[derive(Debug, Default)]
pub(crate) struct PathNode {
    children: Vec<(String, PathNode)>,
    /// Indices into the lookup list of the paths that end here.
    pub(crate) slots: Vec<usize>,
}

impl PathNode {
    pub(crate) fn insert<'p>(&mut self, mut segments: impl Iterator<Item = &'p str>, slot: usize) {
        match segments.next() {
            None => self.slots.push(slot),
            Some(key) => {
                let i = match self.children.iter().position(|(k, _)| k == key) {
                    Some(i) => i,
                    None => {
                        self.children.push((key.to_string(), PathNode::default()));
                        self.children.len() - 1
                    }
                };
                self.children[i].1.insert(segments, slot);
            }
        }
    }
}

/// Deserializes the value at one trie node into the slots below it.
pub(crate) struct NodeSeed<'n, 'o, 'de> {
    pub(crate) node: &'n PathNode,
    pub(crate) out: &'o mut [Raw<'de>],
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> NodeSeed<'_, '_, 'de> {
    fn set(self, value: Raw<'de>) {
        for &slot in &self.node.slots {
            if let Some(s) = self.out.get_mut(slot) {
                *s = value.clone();
            }
        }
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<(), E> {
        self.set(Raw::Str(Cow::Owned(v)));
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<(), E> {
        self.set(Raw::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<(), E> {
        self.set(Raw::Num(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<(), E> {
        self.set(Raw::Num(Cow::Owned(v.to_string())));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<(), E> {
        if v.is_finite() {
            self.set(Raw::Num(Cow::Owned(v.to_string())));
        } else {
            // `1e400`: no value of any column; rejected where a column reads it.
            self.set(Raw::Composite("a number out of range"));
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        self.set(Raw::Null);
        Ok(())
    }
    fn visit_none<E>(self) -> std::result::Result<(), E> {
        self.set(Raw::Null);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<(), A::Error> {
        IgnoredAny.visit_seq(seq)?;
        self.set(Raw::Composite("an array"));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(KeySeed(&self.node.children))? {
            match child {
                Some(node) => map.next_value_seed(NodeSeed {
                    node,
                    out: &mut *self.out,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.set(Raw::Composite("an object"));
        Ok(())
    }
}

/// Reads an object key and finds the child node it names, without allocating.
struct KeySeed<'n>(&'n [(String, PathNode)]);

impl<'de, 'n> DeserializeSeed<'de> for KeySeed<'n> {
    type Value = Option<&'n PathNode>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'n> Visitor<'de> for KeySeed<'n> {
    type Value = Option<&'n PathNode>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> std::result::Result<Self::Value, E> {
        Ok(self.0.iter().find(|(k, _)| k == key).map(|(_, n)| n))
    }
}

// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

//! Freeze/thaw transitions between mutable `BTree` storage and compact
//! read-mostly `Frozen` boxed-slice storage.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::chunked::{Chunked, CHUNK_ABOVE};
use super::{Object, Repr};
use crate::value::Value;

impl Object {
    /// Convert to the immutable boxed-slice representation.
    pub(crate) fn freeze(mut self) -> Self {
        self.freeze_in_place();
        self
    }

    /// arbiter patch: an object from entries in any order, straight into compact storage (one
    /// allocation for the entries, none per key as a `BTreeMap` has). A key given twice keeps
    /// its last value, as repeated [`Object::insert`]s would.
    pub fn from_entries(mut entries: Vec<(Value, Value)>) -> Self {
        if entries.is_empty() {
            return Self { repr: Repr::Empty };
        }
        // A stable sort keeps equal keys in the order given; `dedup_by` keeps the first slot of
        // a run, so each later entry is swapped into that slot before it is dropped.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                core::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let mut o = Self {
            repr: Repr::Frozen(entries.into_boxed_slice()),
        };
        o.freeze_in_place();
        o
    }

    /// Wrap into a `Value::Object`.
    #[inline]
    pub fn into_value(self) -> Value {
        Value::Object(crate::Rc::new(self.freeze()))
    }

    #[cfg(test)]
    #[doc(hidden)]
    pub(crate) const fn storage_variant_for_memory_diagnostics(&self) -> &'static str {
        match &self.repr {
            Repr::Empty => "Empty",
            Repr::Frozen(_) => "Frozen",
            Repr::BTree(_) => "BTree",
            Repr::Chunked(_) => "Chunked",
        }
    }

    fn freeze_in_place(&mut self) {
        match core::mem::take(&mut self.repr) {
            Repr::Empty => {
                self.repr = Repr::Frozen(Box::new([]));
            }
            Repr::Frozen(v) if v.len() > CHUNK_ABOVE => {
                debug_assert_sorted_dedup(&v);
                self.repr = Repr::Chunked(Chunked::from_sorted(Vec::from(v)));
            }
            Repr::Frozen(v) => {
                debug_assert_sorted_dedup(&v);
                self.repr = Repr::Frozen(v);
            }
            Repr::BTree(m) if m.len() > CHUNK_ABOVE => {
                self.repr = Repr::Chunked(Chunked::from_sorted(m.into_iter().collect()));
            }
            Repr::BTree(m) => {
                let boxed = m.into_iter().collect::<Vec<_>>().into_boxed_slice();
                // Release-critical invariant: BTreeMap iteration is sorted and deduplicated
                // before Frozen binary-search storage is constructed.
                debug_assert_sorted_dedup(&boxed);
                self.repr = Repr::Frozen(boxed);
            }
            // Runs stay runs; one that shrank below the threshold stays chunked too.
            Repr::Chunked(c) => self.repr = Repr::Chunked(c),
        }
    }

    pub(super) fn thawed_repr(v: Box<[(Value, Value)]>) -> Repr {
        debug_assert_sorted_dedup(&v);
        if v.is_empty() {
            Repr::Empty
        } else {
            Repr::BTree(Vec::from(v).into_iter().collect())
        }
    }

    pub(super) fn thaw(&mut self) {
        let repr = core::mem::take(&mut self.repr);
        self.repr = match repr {
            Repr::Frozen(v) => Self::thawed_repr(v),
            Repr::Chunked(c) => Self::thawed_repr(c.into_sorted().into_boxed_slice()),
            other => other,
        };
    }
}

#[cfg(debug_assertions)]
fn debug_assert_sorted_dedup(v: &[(Value, Value)]) {
    // This debug-only check documents a release-critical invariant: Frozen storage is
    // always sorted and deduplicated by construction, and release binary searches depend on it.
    for pair in v.windows(2) {
        debug_assert!(
            pair[0].0.cmp(&pair[1].0).is_lt(),
            "Object Frozen entries must be strictly sorted and deduplicated; \
             TODO(Number): revisit NaN ordering/equality semantics in src/number.rs:290-316"
        );
    }
}

#[cfg(not(debug_assertions))]
#[inline]
fn debug_assert_sorted_dedup(_: &[(Value, Value)]) {}

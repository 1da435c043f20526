// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

//! arbiter patch: `Chunked` storage for large read-mostly objects.
//!
//! A large object (a data document with a key per workload identity, say) is frozen into sorted
//! runs of at most [`RUN`] entries, each run shared (`Rc`). Reading costs what `Frozen` costs
//! (a binary search over the runs' first keys, then one inside a run). What it buys is the copy:
//! cloning the object copies the run pointers, not the entries, and inserting into or removing
//! from the copy copies one run. A data update that adds one key to an object of a million keys
//! then costs a few thousand pointer copies instead of a million entry clones, and the copy
//! shares all other runs with the original.

use alloc::vec::Vec;

use crate::value::Value;
use crate::Rc;

/// Objects with more entries than this freeze into runs.
pub(super) const CHUNK_ABOVE: usize = 1024;

/// Entries per run when a run is built; a run that grows past twice this splits.
pub(super) const RUN: usize = 256;

#[derive(Clone, Debug, Default)]
pub(in crate::value) struct Chunked {
    /// Sorted runs, each non-empty, every key of a run below every key of the next.
    pub(super) runs: Vec<Rc<Vec<(Value, Value)>>>,
    pub(super) len: usize,
}

impl Chunked {
    /// Runs of [`RUN`] entries from sorted, deduplicated entries.
    pub(super) fn from_sorted(entries: Vec<(Value, Value)>) -> Self {
        let len = entries.len();
        let mut runs = Vec::with_capacity(len.div_ceil(RUN));
        let mut rest = entries.into_iter();
        loop {
            let run: Vec<(Value, Value)> = rest.by_ref().take(RUN).collect();
            if run.is_empty() {
                break;
            }
            runs.push(Rc::new(run));
        }
        Self { runs, len }
    }

    /// Every entry, in order (cloned where a run is shared).
    pub(super) fn into_sorted(self) -> Vec<(Value, Value)> {
        let mut out = Vec::with_capacity(self.len);
        for run in self.runs {
            match Rc::try_unwrap(run) {
                Ok(v) => out.extend(v),
                Err(shared) => out.extend_from_slice(&shared),
            }
        }
        out
    }

    /// The run that holds `key` if any run does: the last run whose first key is not above it.
    fn run_of(&self, key: &Value) -> Option<usize> {
        let after = self.runs.partition_point(|r| r[0].0 <= *key);
        after.checked_sub(1)
    }

    pub(super) fn get(&self, key: &Value) -> Option<&Value> {
        let run = &self.runs[self.run_of(key)?];
        let i = run.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&run[i].1)
    }

    pub(super) fn get_mut(&mut self, key: &Value) -> Option<&mut Value> {
        let r = self.run_of(key)?;
        let i = self.runs[r].binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&mut Rc::make_mut(&mut self.runs[r])[i].1)
    }

    /// Set `key`; the previous value if there was one. Copies one run when it is shared.
    pub(super) fn insert(&mut self, key: Value, value: Value) -> Option<Value> {
        if self.runs.is_empty() {
            self.runs.push(Rc::new(alloc::vec![(key, value)]));
            self.len = 1;
            return None;
        }
        let r = self.run_of(&key).unwrap_or(0);
        let run = Rc::make_mut(&mut self.runs[r]);
        match run.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(core::mem::replace(&mut run[i].1, value)),
            Err(i) => {
                run.insert(i, (key, value));
                self.len += 1;
                if run.len() > 2 * RUN {
                    let tail = run.split_off(RUN);
                    self.runs.insert(r + 1, Rc::new(tail));
                }
                None
            }
        }
    }

    /// Remove `key`; its value if it was there. Copies one run when it is shared.
    pub(super) fn remove(&mut self, key: &Value) -> Option<Value> {
        let r = self.run_of(key)?;
        let i = self.runs[r].binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        let run = Rc::make_mut(&mut self.runs[r]);
        let (_, v) = run.remove(i);
        if run.is_empty() {
            self.runs.remove(r);
        }
        self.len -= 1;
        Some(v)
    }

    /// The entry after `prev` (the first when `None`).
    pub(super) fn next_after(&self, prev: Option<&Value>) -> Option<(&Value, &Value)> {
        let (mut r, mut i) = match prev {
            None => (0, 0),
            Some(p) => {
                let r = self.run_of(p).unwrap_or(0);
                let run = self.runs.get(r)?;
                let i = match run.binary_search_by(|(k, _)| k.cmp(p)) {
                    Ok(i) => i + 1,
                    Err(i) => i,
                };
                (r, i)
            }
        };
        loop {
            let run = self.runs.get(r)?;
            if let Some((k, v)) = run.get(i) {
                return Some((k, v));
            }
            r += 1;
            i = 0;
        }
    }
}

/// Borrowed iteration over the runs, from both ends.
#[derive(Debug, Clone)]
pub(super) struct ChunkedIter<'a> {
    pub(super) runs: core::slice::Iter<'a, Rc<Vec<(Value, Value)>>>,
    pub(super) front: core::slice::Iter<'a, (Value, Value)>,
    pub(super) back: core::slice::Iter<'a, (Value, Value)>,
    pub(super) remaining: usize,
}

impl<'a> ChunkedIter<'a> {
    pub(super) fn new(c: &'a Chunked) -> Self {
        Self {
            runs: c.runs.iter(),
            front: [].iter(),
            back: [].iter(),
            remaining: c.len,
        }
    }

    pub(super) fn next(&mut self) -> Option<(&'a Value, &'a Value)> {
        loop {
            if let Some((k, v)) = self.front.next() {
                self.remaining -= 1;
                return Some((k, v));
            }
            match self.runs.next() {
                Some(run) => self.front = run.iter(),
                None => {
                    let (k, v) = self.back.next()?;
                    self.remaining -= 1;
                    return Some((k, v));
                }
            }
        }
    }

    pub(super) fn next_back(&mut self) -> Option<(&'a Value, &'a Value)> {
        loop {
            if let Some((k, v)) = self.back.next_back() {
                self.remaining -= 1;
                return Some((k, v));
            }
            match self.runs.next_back() {
                Some(run) => self.back = run.iter(),
                None => {
                    let (k, v) = self.front.next_back()?;
                    self.remaining -= 1;
                    return Some((k, v));
                }
            }
        }
    }
}

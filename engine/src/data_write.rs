//! Writes to the data document: OPA's Data API (`PUT`, `PATCH` with JSON Patch and `DELETE` on
//! `/v1/data/{path}`) and delta bundles' `patch.json`.
//!
//! A write never changes the document that serves: it builds a new one that shares every
//! subtree it does not touch (copy-on-write along the written path), so the work is the written
//! value plus one copy of each object or array on the way down — not the whole document. A list
//! of writes applies completely or not at all, with OPA's rules and error classes:
//!
//! - `add` sets an object's key (replacing it) or inserts into an array at an index (`-`
//!   appends); its parent must exist.
//! - `replace` and `remove` need the document to exist.
//! - `upsert` (`PUT`, and delta bundles' `upsert`) is `add` that creates missing parent objects.
//! - The root can be replaced by an object, never removed.

use regorus::Value;

/// A path into `data`, one string per key or array index (no `data` prefix).
pub type DataPath = Vec<String>;

/// What a write does at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Add,
    Remove,
    Replace,
    /// `add`, creating missing parent objects on the way.
    Upsert,
}

impl WriteOp {
    /// JSON Patch's and delta bundles' names (`add`, `remove`, `replace`, `upsert`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "add" => Some(Self::Add),
            "remove" => Some(Self::Remove),
            "replace" => Some(Self::Replace),
            "upsert" => Some(Self::Upsert),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Replace => "replace",
            Self::Upsert => "upsert",
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub struct DataWrite {
    pub op: WriteOp,
    pub path: DataPath,
    /// The new document (`Null` for `remove`).
    pub value: Value,
}

/// Why a list of writes was refused. Each class is one of OPA's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// A document the write needs does not exist (OPA: 404 `storage_not_found_error`).
    NotFound { path: String, detail: &'static str },
    /// The path runs through a value that is not an object (OPA: 404 `resource_conflict`,
    /// `storage_write_conflict_error`).
    Conflict { path: String },
    /// The write is malformed, targets what it may not, or conflicts with a rule (OPA: 400
    /// `invalid_parameter`).
    Invalid(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound { path, detail } => {
                write!(f, "storage_not_found_error: {path}: {detail}")
            }
            Self::Conflict { path } => write!(f, "storage_write_conflict_error: {path}"),
            Self::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for WriteError {}

/// `/a/b` as OPA prints storage paths.
pub fn show(path: &[String]) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.iter().map(|s| format!("/{s}")).collect()
}

/// A JSON Pointer (RFC 6901) as OPA reads a patch's `path`: `/`-separated, `~1` is `/` and `~0`
/// is `~`; a leading `/` is optional and the empty pointer is the document itself.
pub fn parse_pointer(pointer: &str) -> DataPath {
    let rest = pointer.strip_prefix('/').unwrap_or(pointer);
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Apply `writes` in order to `data` (an object): the new document, or the first error (and no
/// change).
pub fn apply(data: &Value, writes: &[DataWrite]) -> Result<Value, WriteError> {
    let mut current = data.clone();
    for w in writes {
        current = apply_one(&current, w)?;
    }
    Ok(current)
}

fn apply_one(data: &Value, w: &DataWrite) -> Result<Value, WriteError> {
    if w.path.is_empty() {
        return match w.op {
            WriteOp::Remove => Err(WriteError::Invalid(
                "storage_invalid_patch_error: the document root cannot be removed".into(),
            )),
            _ if !matches!(w.value, Value::Object(_)) => Err(WriteError::Invalid(
                "storage_invalid_patch_error: root must be object".into(),
            )),
            _ => Ok(w.value.clone()),
        };
    }
    rewrite(data, w, 0)
}

/// `node` (at `w.path[..depth]`) with the write done below it.
fn rewrite(node: &Value, w: &DataWrite, depth: usize) -> Result<Value, WriteError> {
    let key = &w.path[depth];
    let last = depth + 1 == w.path.len();
    let not_found = |detail| WriteError::NotFound {
        path: show(&w.path),
        detail,
    };
    match node {
        Value::Object(object) => {
            let k = Value::from(key.as_str());
            let new = if last {
                match w.op {
                    WriteOp::Add | WriteOp::Upsert => object.with_inserted(k, w.value.clone()),
                    WriteOp::Replace if object.contains_key(&k) => {
                        object.with_inserted(k, w.value.clone())
                    }
                    WriteOp::Replace => return Err(not_found("document does not exist")),
                    WriteOp::Remove => object
                        .with_removed(&k)
                        .ok_or_else(|| not_found("document does not exist"))?,
                }
            } else {
                let child = match object.get(&k) {
                    Some(c) => rewrite(c, w, depth + 1)?,
                    None if w.op == WriteOp::Upsert => rewrite(&Value::new_object(), w, depth + 1)?,
                    None => return Err(not_found("document does not exist")),
                };
                object.with_inserted(k, child)
            };
            Ok(Value::Object(regorus::Rc::new(new)))
        }
        Value::Array(array) => {
            let len = array.len();
            let index = if last && key == "-" && matches!(w.op, WriteOp::Add | WriteOp::Upsert) {
                Some(len)
            } else if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
                key.parse::<usize>().ok()
            } else {
                None
            };
            let Some(index) = index else {
                return Err(not_found("invalid array index"));
            };
            let inserting = last && matches!(w.op, WriteOp::Add | WriteOp::Upsert);
            if index > len || (index == len && !inserting) {
                return Err(not_found("array index out of range"));
            }
            let mut items: Vec<Value> = Vec::with_capacity(len + 1);
            items.extend(array.iter().cloned());
            if last {
                match w.op {
                    WriteOp::Add | WriteOp::Upsert => items.insert(index, w.value.clone()),
                    WriteOp::Replace => items[index] = w.value.clone(),
                    WriteOp::Remove => {
                        items.remove(index);
                    }
                }
            } else {
                items[index] = rewrite(&items[index], w, depth + 1)?;
            }
            Ok(Value::from(items))
        }
        _ if w.op == WriteOp::Upsert => Err(WriteError::Conflict {
            path: show(&w.path[..depth]),
        }),
        _ => Err(not_found("document does not exist")),
    }
}

/// The value at `path` in `data`, if any.
pub fn lookup<'a>(data: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = data;
    for seg in path {
        node = match node {
            Value::Object(o) => o.get(&Value::from(seg.as_str()))?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The document a write changed, as a path that reaches it through objects only: the write's
/// own path, or — when the path goes into an array, whose indices a write can shift — the
/// path of the outermost such array. Replaying "this path now holds this value (or nothing)"
/// for each changed document reproduces the writes (see [`DataOverlay`]).
pub fn changed_document(after: &Value, path: &[String]) -> DataPath {
    let mut node = after;
    for (i, seg) in path.iter().enumerate() {
        match node {
            Value::Object(o) => match o.get(&Value::from(seg.as_str())) {
                Some(next) => node = next,
                None => return path[..=i].to_vec(),
            },
            Value::Array(_) => return path[..i].to_vec(),
            _ => return path[..i].to_vec(),
        }
    }
    path.to_vec()
}

/// What the Data API has written, kept so that a full reload (a file changed, a new bundle)
/// does not lose it: for each changed document, its value after the last write (`None`: it was
/// removed). No entry lies inside another (a write inside a kept document updates that
/// document's entry), so replaying the entries in any order gives the same data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataOverlay {
    entries: std::collections::BTreeMap<DataPath, Option<Value>>,
}

impl DataOverlay {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Remember that `writes` turned the data into `after`.
    pub fn record(&mut self, after: &Value, writes: &[DataWrite]) {
        for w in writes {
            let changed = changed_document(after, &w.path);
            // An entry at the changed document or above it (one look-up per prefix).
            let kept = (0..=changed.len())
                .map(|n| &changed[..n])
                .find(|prefix| self.entries.contains_key(*prefix))
                .map(<[String]>::to_vec);
            let at = match kept {
                Some(ancestor) => ancestor,
                None => {
                    // Entries inside it: they sort right after it, contiguously.
                    let inside: Vec<DataPath> = self
                        .entries
                        .range(changed.clone()..)
                        .map(|(k, _)| k)
                        .take_while(|k| k.starts_with(&changed))
                        .cloned()
                        .collect();
                    for k in inside {
                        self.entries.remove(&k);
                    }
                    changed
                }
            };
            let value = lookup(after, &at).cloned();
            self.entries.insert(at, value);
        }
    }

    /// The entries as writes: `upsert` for a kept document, `remove` for a removed one.
    pub fn writes(&self) -> Vec<DataWrite> {
        self.entries
            .iter()
            .map(|(path, value)| match value {
                Some(v) => DataWrite {
                    op: WriteOp::Upsert,
                    path: path.clone(),
                    value: v.clone(),
                },
                None => DataWrite {
                    op: WriteOp::Remove,
                    path: path.clone(),
                    value: Value::Null,
                },
            })
            .collect()
    }

    /// Forget the entry at `path` (it no longer applies).
    pub fn forget(&mut self, path: &[String]) {
        self.entries.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{from_json, to_json};
    use serde_json::json;

    fn w(op: &str, path: &str, value: serde_json::Value) -> DataWrite {
        DataWrite {
            op: WriteOp::parse(op).unwrap(),
            path: parse_pointer(path),
            value: from_json(&value),
        }
    }

    fn run(data: serde_json::Value, writes: &[DataWrite]) -> Result<serde_json::Value, WriteError> {
        apply(&from_json(&data), writes).map(|v| to_json(&v))
    }

    #[test]
    fn json_patch_as_opa_applies_it() {
        let data = json!({"roles": {"alice": "admin"}, "arr": [1, 2]});
        assert_eq!(
            run(
                data.clone(),
                &[
                    w("add", "/roles/carol", json!("admin")),
                    w("remove", "/roles/alice", json!(null)),
                    w("add", "/arr/-", json!(3)),
                    w("add", "/arr/0", json!(0)),
                    w("replace", "/arr/1", json!(10)),
                    w("add", "roles/a~1b", json!(1)),
                    w("add", "/roles/c~0d", json!(2)),
                ]
            )
            .unwrap(),
            json!({"roles": {"carol": "admin", "a/b": 1, "c~d": 2}, "arr": [0, 10, 2, 3]})
        );
        // Errors, each OPA's answer to the same write (conformance/opa-data-api records them).
        let err = |writes: &[DataWrite]| run(data.clone(), writes).unwrap_err().to_string();
        assert_eq!(
            err(&[w("remove", "/roles/nobody", json!(null))]),
            "storage_not_found_error: /roles/nobody: document does not exist"
        );
        assert_eq!(
            err(&[w("add", "/nope/deep/a", json!(1))]),
            "storage_not_found_error: /nope/deep/a: document does not exist"
        );
        assert_eq!(
            err(&[w("replace", "/roles/zed", json!(1))]),
            "storage_not_found_error: /roles/zed: document does not exist"
        );
        assert_eq!(
            err(&[w("add", "/arr/9", json!(1))]),
            "storage_not_found_error: /arr/9: array index out of range"
        );
        assert_eq!(
            err(&[w("upsert", "/roles/alice/deeper", json!(5))]),
            "storage_write_conflict_error: /roles/alice"
        );
        assert_eq!(
            err(&[w("add", "", json!([1]))]),
            "storage_invalid_patch_error: root must be object"
        );
    }

    #[test]
    fn a_failed_list_changes_nothing_and_the_old_document_is_untouched() {
        let before = from_json(&json!({"roles": {"alice": "admin"}}));
        let writes = [
            w("add", "/roles/zz", json!(1)),
            w("remove", "/roles/nobody", json!(null)),
        ];
        assert!(apply(&before, &writes).is_err());
        let after = apply(&before, &writes[..1]).unwrap();
        assert_eq!(to_json(&before), json!({"roles": {"alice": "admin"}}));
        assert_eq!(
            to_json(&after),
            json!({"roles": {"alice": "admin", "zz": 1}})
        );
    }

    #[test]
    fn untouched_subtrees_are_shared_not_copied() {
        let before = from_json(&json!({"a": {"big": {"x": 1}}, "b": {"y": 2}}));
        let after = apply(&before, &[w("upsert", "/b/z", json!(3))]).unwrap();
        let (Some(Value::Object(old)), Some(Value::Object(new))) = (
            lookup(&before, &["a".into()]),
            lookup(&after, &["a".into()]),
        ) else {
            panic!("objects expected");
        };
        assert!(
            regorus::Rc::ptr_eq(old, new),
            "the untouched subtree was copied"
        );
    }

    #[test]
    fn upsert_creates_parents() {
        assert_eq!(
            run(json!({}), &[w("upsert", "/x/y/z", json!({"a": 1}))]).unwrap(),
            json!({"x": {"y": {"z": {"a": 1}}}})
        );
    }

    #[test]
    fn the_overlay_replays_to_the_same_data() {
        let base = from_json(&json!({"roles": {"alice": "admin"}, "arr": [1], "keep": 1}));
        let mut overlay = DataOverlay::default();
        let mut data = base.clone();
        for batch in [
            vec![w("upsert", "/roles/bob", json!("admin"))],
            vec![w("remove", "/roles/alice", json!(null))],
            vec![w("add", "/arr/0", json!(0))],
            vec![w("upsert", "/x/y", json!({"z": 1}))],
            vec![
                w("add", "/x/y/w", json!(2)),
                w("upsert", "/x", json!({"q": 1})),
            ],
        ] {
            data = apply(&data, &batch).unwrap();
            overlay.record(&data, &batch);
        }
        let replayed = apply(&base, &overlay.writes()).unwrap();
        assert_eq!(to_json(&replayed), to_json(&data));
        // No entry inside another: `/x/y` was folded into `/x`.
        assert_eq!(overlay.len(), 4, "{overlay:?}");
    }

    /// regorus patch 26: a large object freezes into shared runs. Whatever the storage, it
    /// reads, iterates (both ways and by cursor) and edits as the ordered map it is, and an edit
    /// of a copy never shows in the original.
    mod runs {
        use proptest::prelude::*;
        use regorus::Value;
        use regorus::value::Object;
        use std::collections::BTreeMap;

        fn object(model: &BTreeMap<u32, u32>) -> Value {
            model
                .iter()
                .map(|(k, v)| (Value::from(u64::from(*k)), Value::from(u64::from(*v))))
                .collect::<Object>()
                .into_value()
        }

        fn same(o: &Object, model: &BTreeMap<u32, u32>) -> Result<(), TestCaseError> {
            let want: Vec<(Value, Value)> = model
                .iter()
                .map(|(k, v)| (Value::from(u64::from(*k)), Value::from(u64::from(*v))))
                .collect();
            prop_assert_eq!(o.len(), want.len());
            let forward: Vec<(Value, Value)> =
                o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&forward, &want);
            let mut backward: Vec<(Value, Value)> = o
                .iter_sorted()
                .rev()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            backward.reverse();
            prop_assert_eq!(&backward, &want);
            let mut cursor = o.cursor();
            let mut by_cursor = Vec::new();
            while let Some((k, v)) = o.next(&mut cursor) {
                by_cursor.push((k.clone(), v.clone()));
            }
            prop_assert_eq!(&by_cursor, &want);
            Ok(())
        }

        /// Runs split when they grow past twice their size: 1,500 keys inserted between the
        /// first run's.
        #[test]
        fn a_run_that_grows_splits_and_stays_ordered() {
            let mut model: BTreeMap<u32, u32> = (0..2_000).map(|k| (k * 2_000, k)).collect();
            let Value::Object(o) = object(&model) else {
                unreachable!()
            };
            let mut copy: Object = (*o).clone();
            for k in 1..1_500 {
                model.insert(k, k);
                copy.insert(Value::from(u64::from(k)), Value::from(u64::from(k)));
            }
            same(&copy, &model).unwrap();
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            #[test]
            fn large_objects_behave_as_ordered_maps(
                keys in proptest::collection::btree_set(0u32..20_000, 0..4_000),
                edits in proptest::collection::vec((0u32..20_000, any::<bool>()), 0..300),
            ) {
                let mut model: BTreeMap<u32, u32> = keys.iter().map(|k| (*k, k * 2)).collect();
                let Value::Object(original) = object(&model) else { unreachable!() };
                same(&original, &model)?;
                let before = model.clone();
                // Edits of copies (the data-write path) and in place (`insert`, `remove`).
                let mut copy: Object = (*original).clone();
                for (i, (k, add)) in edits.iter().enumerate() {
                    let key = Value::from(u64::from(*k));
                    if *add {
                        model.insert(*k, i as u32);
                        if i % 2 == 0 {
                            copy = copy.with_inserted(key.clone(), Value::from(i as u64));
                        } else {
                            copy.insert(key.clone(), Value::from(i as u64));
                        }
                    } else {
                        let had = model.remove(k).is_some();
                        if i % 2 == 0 {
                            if let Some(c) = copy.with_removed(&key) { copy = c; }
                        } else {
                            prop_assert_eq!(copy.remove(&key).is_some(), had);
                        }
                    }
                    let got = copy.get(&key).cloned();
                    let want = model.get(k).map(|v| Value::from(u64::from(*v)));
                    prop_assert_eq!(got, want);
                }
                same(&copy, &model)?;
                same(&original, &before)?;
            }
        }
    }
}

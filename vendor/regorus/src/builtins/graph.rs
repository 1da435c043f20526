// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{enforce_limit, ensure_args_count, ensure_object};
use crate::lexer::Span;
use crate::value::Object;
use crate::value::Value;
use crate::*;

use alloc::collections::BTreeSet;

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("graph.reachable", (reachable, 2));
    m.insert("graph.reachable_paths", (reachable_paths, 2));
    m.insert("walk", (walk, 1));
}

fn reachable(span: &Span, params: &[Ref<Expr>], args: &[Value], strict: bool) -> Result<Value> {
    let name = "graph.reachable";
    ensure_args_count(span, name, params, args, 2)?;

    let graph = ensure_object(name, &params[0], args[0].clone())?;
    let mut worklist = vec![];

    match &args[1] {
        Value::Array(arr) => {
            for node in arr.iter() {
                worklist.push(node.clone());
                // Guard worklist growth when seeding traversal from an array.
                enforce_limit()?;
            }
        }
        Value::Set(set) => {
            for node in set.iter() {
                worklist.push(node.clone());
                // Guard worklist growth when seeding traversal from a set.
                enforce_limit()?;
            }
        }
        _ if strict => bail!(params[1].span().error("initial vertices must be array/set")),
        _ => return Ok(Value::Undefined),
    }

    let mut reachable = BTreeSet::new();
    while let Some(v) = worklist.pop() {
        if reachable.contains(&v) {
            continue;
        }

        match graph.get(&v) {
            Some(Value::Array(arr)) => {
                for neighbor in arr.iter() {
                    worklist.push(neighbor.clone());
                    // Guard worklist growth when enqueuing array neighbors.
                    enforce_limit()?;
                }
            }
            Some(Value::Set(set)) => {
                for neighbor in set.iter() {
                    worklist.push(neighbor.clone());
                    // Guard worklist growth when enqueuing set neighbors.
                    enforce_limit()?;
                }
            }
            Some(_) => (),
            _ => continue,
        }

        reachable.insert(v);
        // Guard reachable set size as discovered vertices accumulate.
        enforce_limit()?;
    }

    Ok(Value::from_set(reachable))
}

fn reachable_paths(
    span: &Span,
    params: &[Ref<Expr>],
    args: &[Value],
    strict: bool,
) -> Result<Value> {
    let name = "graph.reachable_paths";
    ensure_args_count(span, name, params, args, 2)?;

    let graph = ensure_object(name, &params[0], args[0].clone())?;
    let initial: Vec<Value> = match &args[1] {
        Value::Array(arr) => arr.iter().cloned().collect(),
        Value::Set(set) => set.iter().cloned().collect(),
        _ if strict => bail!(params[1].span().error("initial vertices must be array/set")),
        _ => return Ok(Value::Undefined),
    };
    // arbiter patch 24: OPA's `builtinReachablePaths` (topdown/reachable.go): each edge of an
    // initial node starts a walk with its own set of reached nodes.
    let mut result = BTreeSet::new();
    for node in &initial {
        if let Some(edges) = graph.get(node) {
            let neighbors = vertices(edges);
            if neighbors.is_empty() {
                result.insert(Value::from_array(Vec::from([node.clone()])));
            }
            for neighbor in &neighbors {
                let mut reached = BTreeSet::from([node.clone()]);
                path_builder(&graph, neighbor, &[node.clone()], &mut result, &mut reached)?;
            }
        }
    }
    Ok(Value::from_set(result))
}

/// OPA's `foreachVertex`: an array's or a set's elements; nothing for anything else.
fn vertices(edges: &Value) -> Vec<Value> {
    match edges {
        Value::Array(arr) => arr.iter().cloned().collect(),
        Value::Set(set) => set.iter().cloned().collect(),
        _ => Vec::new(),
    }
}

/// arbiter patch 24: OPA's `pathBuilder`, quirks included. A node reached before ends the path
/// there (the node that reached it is marked, not the neighbour), and the paths one node ends
/// accumulate: its second such neighbour adds the path twice over, as Go's `append` does.
/// A neighbour that is no node of the graph ends the path before it.
fn path_builder(
    graph: &Object,
    root: &Value,
    path: &[Value],
    result: &mut BTreeSet<Value>,
    reached: &mut BTreeSet<Value>,
) -> Result<()> {
    let mut paths: Vec<Value> = Vec::new();
    let Some(edges) = graph.get(root) else {
        paths.extend_from_slice(path);
        result.insert(Value::from_array(paths));
        return enforce_limit();
    };
    let mut path = path.to_vec();
    path.push(root.clone());
    let neighbors = vertices(edges);
    if neighbors.is_empty() {
        paths.extend_from_slice(&path);
        result.insert(Value::from_array(paths));
        return enforce_limit();
    }
    for neighbor in &neighbors {
        if reached.contains(neighbor) {
            paths.extend_from_slice(&path);
            result.insert(Value::from_array(paths.clone()));
        } else {
            reached.insert(root.clone());
            path_builder(graph, neighbor, &path, result, reached)?;
        }
        enforce_limit()?;
    }
    Ok(())
}

fn walk_visit(path: &mut Vec<Value>, value: &Value, paths: &mut Vec<Value>) -> Result<()> {
    {
        let path = Value::from_array(path.clone());
        paths.push(Value::from_array([path, value.clone()].into()));
        // Guard walk result growth when emitting a new path/value pair.
        enforce_limit()?;
    }
    match value {
        Value::Array(arr) => {
            for (idx, elem) in arr.iter().enumerate() {
                path.push(Value::from(idx));
                // Guard path stack growth while traversing array members.
                enforce_limit()?;
                walk_visit(path, elem, paths)?;
                path.pop();
            }
        }
        Value::Set(set) => {
            for elem in set.iter() {
                path.push(elem.clone());
                // Guard path stack growth while traversing set members.
                enforce_limit()?;
                walk_visit(path, elem, paths)?;
                path.pop();
            }
        }
        Value::Object(obj) => {
            for (key, value) in obj.iter_sorted() {
                path.push(key.clone());
                // Guard path stack growth while traversing object entries.
                enforce_limit()?;
                walk_visit(path, value, paths)?;
                path.pop();
            }
        }
        _ => (),
    }
    Ok(())
}

fn walk(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "walk";
    ensure_args_count(span, name, params, args, 1)?;
    let mut paths = vec![];
    walk_visit(&mut vec![], &args[0], &mut paths)?;
    Ok(Value::from_array(paths))
}

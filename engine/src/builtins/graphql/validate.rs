//! A query checked against a schema by gqlparser's validation rules (OPA's
//! `gqlvalidator.Validate`): the same rules, messages and order of errors. gqlparser notes what
//! it learns on the syntax tree as it walks (a field's definition, a variable's use); here the
//! walk keeps those notes beside the tree, keyed by node.

use std::collections::{HashMap, HashSet};

use super::GqlError;
use super::ast::*;
use super::schema::Schema;

/// Every rule's errors, in gqlparser's order (by node visited, then by rule name).
pub fn validate(schema: &Schema, doc: &QueryDocument) -> Vec<GqlError> {
    let mut w = Walker {
        schema,
        doc,
        errs: Vec::new(),
        current_op: None,
        validated_spreads: HashSet::new(),
        fields: HashMap::new(),
        used_vars: HashSet::new(),
        directives_seen: HashSet::new(),
        visited_frags: HashSet::new(),
        in_fragment_definition: false,
        fragment_used: HashSet::new(),
        seen_fragments: HashSet::new(),
        seen_operations: HashSet::new(),
        compared_pairs: HashMap::new(),
        compared_fragments: HashSet::new(),
    };
    for op in &doc.operations {
        w.validated_spreads.clear();
        w.walk_operation(op);
    }
    for f in &doc.fragments {
        w.validated_spreads.clear();
        w.walk_fragment(f);
    }
    w.errs
}

type FieldNote<'a> = (Option<&'a FieldDefinition>, Option<&'a Definition>);

struct Walker<'a> {
    schema: &'a Schema,
    doc: &'a QueryDocument,
    errs: Vec<GqlError>,
    current_op: Option<&'a OperationDefinition>,
    validated_spreads: HashSet<&'a str>,
    /// Each field's definition and the type it was selected on, as last walked.
    fields: HashMap<*const Field, FieldNote<'a>>,
    used_vars: HashSet<*const VariableDefinition>,
    // State of the rules that remember across nodes.
    directives_seen: HashSet<(String, usize, i64)>,
    visited_frags: HashSet<&'a str>,
    in_fragment_definition: bool,
    fragment_used: HashSet<&'a str>,
    seen_fragments: HashSet<&'a str>,
    seen_operations: HashSet<&'a str>,
    compared_pairs: HashMap<String, HashMap<String, bool>>,
    compared_fragments: HashSet<String>,
}

impl<'a> Walker<'a> {
    fn error(&mut self, pos: At, message: String) {
        self.errs.push(GqlError::rule(pos, message));
    }

    fn fragment(&self, name: &str) -> Option<&'a FragmentDefinition> {
        self.doc.fragments.iter().find(|f| f.name == name)
    }

    fn note(&self, f: &Field) -> FieldNote<'a> {
        self.fields
            .get(&(f as *const Field))
            .copied()
            .unwrap_or((None, None))
    }

    fn variable_of(&self, value: &Value) -> Option<&'a VariableDefinition> {
        if value.kind != ValueKind::Variable {
            return None;
        }
        self.current_op?
            .variable_definitions
            .iter()
            .find(|v| v.variable == value.raw)
    }

    // ---- the walk ----

    fn walk_operation(&mut self, op: &'a OperationDefinition) {
        self.current_op = Some(op);
        for v in &op.variable_definitions {
            self.on_variable(v);
        }
        let (def, loc) = match op.operation.as_str() {
            "query" | "" => (self.schema.root("query"), "QUERY"),
            "mutation" => (self.schema.root("mutation"), "MUTATION"),
            "subscription" => (self.schema.root("subscription"), "SUBSCRIPTION"),
            _ => (None, ""),
        };
        for v in &op.variable_definitions {
            let vdef = self.schema.ty(v.ty.name());
            if let Some(d) = &v.default_value {
                self.walk_value(d, Some(&v.ty), vdef);
            }
            self.walk_directives(&v.directives, "VARIABLE_DEFINITION");
        }
        self.walk_directives(&op.directives, loc);
        self.walk_selection_set(def, &op.selection_set);
        self.on_operation(op);
        self.current_op = None;
    }

    fn walk_fragment(&mut self, f: &'a FragmentDefinition) {
        let def = self.schema.ty(&f.type_condition);
        self.walk_directives(&f.directives, "FRAGMENT_DEFINITION");
        self.walk_selection_set(def, &f.selection_set);
        self.on_fragment(f);
    }

    /// gqlparser also notes each directive's parent type; no rule reads it.
    fn walk_directives(&mut self, dirs: &'a [Directive], loc: &str) {
        for dir in dirs {
            let def = self.schema.directives.get(&dir.name);
            for arg in &dir.arguments {
                let adef = def.and_then(|d| d.argument(&arg.name));
                self.walk_argument(adef, arg);
            }
            self.on_directive(dir, def, loc);
        }
        self.on_directive_list(dirs);
    }

    fn walk_argument(&mut self, adef: Option<&'a ArgumentDefinition>, arg: &'a Argument) {
        match adef {
            Some(a) => self.walk_value(&arg.value, Some(&a.ty), self.schema.ty(a.ty.name())),
            None => self.walk_value(&arg.value, None, None),
        }
    }

    fn walk_value(
        &mut self,
        value: &'a Value,
        expected: Option<&'a Type>,
        def: Option<&'a Definition>,
    ) {
        let var = self.variable_of(value);
        if let Some(v) = var {
            self.used_vars.insert(v as *const VariableDefinition);
        }
        if value.kind == ValueKind::Object {
            for child in &value.children {
                match def.and_then(|d| d.field(&child.name)) {
                    Some(fd) => {
                        self.walk_value(&child.value, Some(&fd.ty), self.schema.ty(fd.ty.name()))
                    }
                    None => self.walk_value(&child.value, None, None),
                }
            }
        }
        if value.kind == ValueKind::List {
            for child in &value.children {
                match expected.and_then(|e| e.elem.as_deref()) {
                    Some(elem) => self.walk_value(&child.value, Some(elem), def),
                    None => self.walk_value(&child.value, None, None),
                }
            }
        }
        self.on_value(value, expected, def, var);
    }

    fn walk_selection_set(&mut self, parent: Option<&'a Definition>, set: &'a [Selection]) {
        for s in set {
            self.walk_selection(parent, s);
        }
    }

    fn walk_selection(&mut self, parent: Option<&'a Definition>, sel: &'a Selection) {
        match sel {
            Selection::Field(f) => {
                let def = if f.name == "__typename" {
                    Some(&self.schema.typename_field)
                } else {
                    parent.and_then(|p| p.field(&f.name))
                };
                self.fields.insert(f as *const Field, (def, parent));
                let next = def.and_then(|d| self.schema.ty(d.ty.name()));
                for arg in &f.arguments {
                    let adef = def.and_then(|d| d.argument(&arg.name));
                    self.walk_argument(adef, arg);
                }
                self.walk_directives(&f.directives, "FIELD");
                self.walk_selection_set(next, &f.selection_set);
                self.on_field(f, def, parent);
            }
            Selection::InlineFragment(i) => {
                let next = if i.type_condition.is_empty() {
                    parent
                } else {
                    self.schema.ty(&i.type_condition)
                };
                self.walk_directives(&i.directives, "INLINE_FRAGMENT");
                self.walk_selection_set(next, &i.selection_set);
                self.on_inline_fragment(i, parent);
            }
            Selection::FragmentSpread(s) => {
                let fdef = self.fragment(&s.name);
                let next = fdef.and_then(|d| self.schema.ty(&d.type_condition));
                self.walk_directives(&s.directives, "FRAGMENT_SPREAD");
                if let Some(fd) = fdef
                    && self.validated_spreads.insert(fd.name.as_str())
                {
                    self.walk_selection_set(next, &fd.selection_set);
                }
                self.on_fragment_spread(s, fdef, parent);
            }
        }
    }

    // ---- the rules, by event; within an event in the order of their names ----

    fn on_operation(&mut self, op: &'a OperationDefinition) {
        // KnownRootType
        if self.schema.root(&op.operation).is_none() {
            self.error(
                op.pos,
                format!(
                    "Schema does not support operation type \"{}\"",
                    op.operation
                ),
            );
        }
        // LoneAnonymousOperation
        if op.name.is_empty() && self.doc.operations.len() > 1 {
            self.error(
                op.pos,
                "This anonymous operation must be the only defined operation.".to_string(),
            );
        }
        // NoUnusedVariables
        for v in &op.variable_definitions {
            if self.used_vars.contains(&(v as *const VariableDefinition)) {
                continue;
            }
            let message = if op.name.is_empty() {
                format!("Variable \"${}\" is never used.", v.variable)
            } else {
                format!(
                    "Variable \"${}\" is never used in operation \"{}\".",
                    v.variable, op.name
                )
            };
            self.error(v.pos, message);
        }
        // OverlappingFieldsCanBeMerged
        self.overlapping_within(&op.selection_set);
        // SingleFieldSubscriptions
        if self.schema.subscription.is_some() && op.operation == "subscription" {
            let fields = self.top_fields(&op.selection_set);
            let name = if op.name.is_empty() {
                "Anonymous Subscription".to_string()
            } else {
                format!("Subscription {}", go_quote(&op.name))
            };
            if fields.len() > 1 {
                self.error(
                    fields[1].1,
                    format!("{name} must select only one top level field."),
                );
            }
            for (fname, pos) in &fields {
                if fname.starts_with("__") {
                    self.error(
                        *pos,
                        format!("{name} must not select an introspection top level field."),
                    );
                }
            }
        }
        // UniqueOperationNames
        if !self.seen_operations.insert(op.name.as_str()) {
            self.error(
                op.pos,
                format!("There can be only one operation named \"{}\".", op.name),
            );
        }
        // UniqueVariableNames
        let mut seen: HashSet<&str> = HashSet::new();
        for v in &op.variable_definitions {
            if !seen.insert(&v.variable) {
                self.error(
                    v.pos,
                    format!("There can be only one variable named \"${}\".", v.variable),
                );
            }
        }
        // VariablesAreInputTypes
        for v in &op.variable_definitions {
            if let Some(d) = self.schema.ty(v.ty.name())
                && !d.is_input_type()
            {
                self.error(
                    v.pos,
                    format!(
                        "Variable \"${}\" cannot be non-input type \"{}\".",
                        v.variable, v.ty
                    ),
                );
            }
        }
    }

    fn on_field(
        &mut self,
        f: &'a Field,
        def: Option<&'a FieldDefinition>,
        parent: Option<&'a Definition>,
    ) {
        // FieldsOnCorrectType
        if let Some(p) = parent
            && def.is_none()
        {
            let mut message = format!("Cannot query field \"{}\" on type \"{}\".", f.name, p.name);
            let types = self.suggested_type_names(p, &f.name);
            if !types.is_empty() {
                message += &format!(
                    " Did you mean to use an inline fragment on {}?",
                    quoted_or_list(&types)
                );
            } else if p.kind == OBJECT || p.kind == INTERFACE {
                let names: Vec<&str> = p.fields.iter().map(|f| f.name.as_str()).collect();
                let s = suggestion_list(&f.name, &names);
                if !s.is_empty() {
                    message += &format!(" Did you mean {}?", quoted_or_list(&s));
                }
            }
            self.error(f.pos, message);
        }
        // KnownArgumentNames
        if let (Some(d), Some(p)) = (def, parent) {
            for (arg, suggestion) in unknown_arguments(&d.arguments, &f.arguments) {
                self.error(
                    f.pos,
                    format!(
                        "Unknown argument \"{}\" on field \"{}.{}\".{suggestion}",
                        arg.name, p.name, f.name
                    ),
                );
            }
        }
        // MaxIntrospectionDepth
        if (f.name == "__schema" || f.name == "__type")
            && self.depth_field(f, &mut HashSet::new(), 0)
        {
            self.error(f.pos, "Maximum introspection depth exceeded".to_string());
        }
        // OverlappingFieldsCanBeMerged
        if self.current_op.is_some() {
            self.overlapping_within(&f.selection_set);
        }
        // ProvidedRequiredArguments
        if let Some(d) = def {
            for adef in missing_arguments(&d.arguments, &f.arguments) {
                self.error(
                    f.pos,
                    format!(
                        "Field \"{}\" argument \"{}\" of type \"{}\" is required, but it was not provided.",
                        f.name, adef.name, adef.ty
                    ),
                );
            }
        }
        // ScalarLeafs
        if let Some(d) = def
            && let Some(ft) = self.schema.ty(d.ty.name())
        {
            if ft.is_leaf_type() && !f.selection_set.is_empty() {
                self.error(
                    f.pos,
                    format!(
                        "Field \"{}\" must not have a selection since type \"{}\" has no subfields.",
                        f.name, ft.name
                    ),
                );
            }
            if !ft.is_leaf_type() && f.selection_set.is_empty() {
                self.error(
                    f.pos,
                    format!(
                        "Field \"{}\" of type \"{}\" must have a selection of subfields. Did you mean \"{} {{ ... }}\"?",
                        f.name, d.ty, f.name
                    ),
                );
            }
        }
        // UniqueArgumentNames
        self.unique_args(&f.arguments);
    }

    fn on_fragment(&mut self, f: &'a FragmentDefinition) {
        let def = self.schema.ty(&f.type_condition);
        // FragmentsOnCompositeTypes
        if let Some(d) = def
            && !f.type_condition.is_empty()
            && !d.is_composite_type()
        {
            self.error(
                f.pos,
                format!(
                    "Fragment \"{}\" cannot condition on non composite type \"{}\".",
                    f.name, f.type_condition
                ),
            );
        }
        // KnownTypeNames
        if def.is_none() {
            let mut names: Vec<&str> = self.schema.types.keys().map(String::as_str).collect();
            names.sort();
            let message = format!(
                "Unknown type \"{}\".{}",
                f.type_condition,
                suggest_quoted("Did you mean", &f.type_condition, &names)
            );
            self.error(f.pos, message);
        }
        // NoFragmentCycles
        let mut path: Vec<&'a FragmentSpread> = Vec::new();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        self.fragment_cycles(f, &mut path, &mut index);
        // NoUnusedFragments
        self.in_fragment_definition = true;
        if !self.fragment_used.contains(f.name.as_str()) {
            self.error(f.pos, format!("Fragment \"{}\" is never used.", f.name));
        }
        // OverlappingFieldsCanBeMerged
        self.overlapping_within(&f.selection_set);
        // UniqueFragmentNames
        if !self.seen_fragments.insert(f.name.as_str()) {
            self.error(
                f.pos,
                format!("There can be only one fragment named \"{}\".", f.name),
            );
        }
    }

    fn on_inline_fragment(&mut self, i: &'a InlineFragment, parent: Option<&'a Definition>) {
        // FragmentsOnCompositeTypes
        if let Some(t) = self.schema.ty(&i.type_condition)
            && !t.is_composite_type()
        {
            self.error(
                i.pos,
                format!(
                    "Fragment cannot condition on non composite type \"{}\".",
                    i.type_condition
                ),
            );
        }
        // KnownTypeNames
        if !i.type_condition.is_empty() && self.schema.ty(&i.type_condition).is_none() {
            self.error(i.pos, format!("Unknown type \"{}\".", i.type_condition));
        }
        // OverlappingFieldsCanBeMerged
        self.overlapping_within(&i.selection_set);
        // PossibleFragmentSpreads
        if let Some(p) = parent
            && !self.spread_possible(p, &i.type_condition)
        {
            self.error(
                i.pos,
                format!(
                    "Fragment cannot be spread here as objects of type \"{}\" can never be of type \"{}\".",
                    p.name, i.type_condition
                ),
            );
        }
    }

    fn on_fragment_spread(
        &mut self,
        s: &'a FragmentSpread,
        fdef: Option<&'a FragmentDefinition>,
        parent: Option<&'a Definition>,
    ) {
        // KnownFragmentNames
        if fdef.is_none() {
            self.error(s.pos, format!("Unknown fragment \"{}\".", s.name));
        }
        // NoUnusedFragments
        if !self.in_fragment_definition {
            self.fragment_used.insert(s.name.as_str());
        }
        // PossibleFragmentSpreads
        if let (Some(fd), Some(p)) = (fdef, parent)
            && !self.spread_possible(p, &fd.type_condition)
        {
            self.error(
                s.pos,
                format!(
                    "Fragment \"{}\" cannot be spread here as objects of type \"{}\" can never be of type \"{}\".",
                    s.name, p.name, fd.type_condition
                ),
            );
        }
    }

    fn on_directive(
        &mut self,
        dir: &'a Directive,
        def: Option<&'a DirectiveDefinition>,
        loc: &str,
    ) {
        // KnownArgumentNames
        if let Some(d) = def {
            for (arg, suggestion) in unknown_arguments(&d.arguments, &dir.arguments) {
                self.error(
                    dir.pos,
                    format!(
                        "Unknown argument \"{}\" on directive \"@{}\".{suggestion}",
                        arg.name, dir.name
                    ),
                );
            }
        }
        // KnownDirectives
        match def {
            None => self.error(dir.pos, format!("Unknown directive \"@{}\".", dir.name)),
            Some(d) if !d.locations.iter().any(|l| l == loc) => {
                let (line, column) = dir.pos.map(|p| (p.line, p.column)).unwrap_or((0, 0));
                if self
                    .directives_seen
                    .insert((dir.name.clone(), line, column))
                {
                    self.error(
                        dir.pos,
                        format!("Directive \"@{}\" may not be used on {loc}.", dir.name),
                    );
                }
            }
            Some(_) => {}
        }
        // ProvidedRequiredArguments
        if let Some(d) = def {
            for adef in missing_arguments(&d.arguments, &dir.arguments) {
                self.error(
                    dir.pos,
                    format!(
                        "Directive \"@{}\" argument \"{}\" of type \"{}\" is required, but it was not provided.",
                        d.name, adef.name, adef.ty
                    ),
                );
            }
        }
        // UniqueArgumentNames
        self.unique_args(&dir.arguments);
    }

    fn on_directive_list(&mut self, dirs: &'a [Directive]) {
        // UniqueDirectivesPerLocation
        let mut seen: HashSet<&str> = HashSet::new();
        for dir in dirs {
            if dir.name != "repeatable" && seen.contains(dir.name.as_str()) {
                self.error(
                    dir.pos,
                    format!(
                        "The directive \"@{}\" can only be used once at this location.",
                        dir.name
                    ),
                );
            }
            seen.insert(&dir.name);
        }
    }

    fn on_value(
        &mut self,
        value: &'a Value,
        expected: Option<&'a Type>,
        def: Option<&'a Definition>,
        var: Option<&'a VariableDefinition>,
    ) {
        // NoUndefinedVariables
        if let Some(op) = self.current_op
            && value.kind == ValueKind::Variable
            && var.is_none()
        {
            let message = if op.name.is_empty() {
                format!("Variable \"{value}\" is not defined.")
            } else {
                format!(
                    "Variable \"{value}\" is not defined by operation \"{}\".",
                    op.name
                )
            };
            self.error(value.pos, message);
        }
        // UniqueInputFieldNames
        if value.kind == ValueKind::Object {
            let mut seen: HashSet<&str> = HashSet::new();
            for c in &value.children {
                if !seen.insert(&c.name) {
                    self.error(
                        c.pos,
                        format!("There can be only one input field named \"{}\".", c.name),
                    );
                }
            }
        }
        // ValuesOfCorrectType
        if let (Some(exp), Some(d)) = (expected, def) {
            self.values_of_correct_type(value, exp, d);
        }
        // VariablesInAllowedPosition
        if let (Some(exp), Some(v), Some(_)) = (expected, var, self.current_op)
            && value.kind == ValueKind::Variable
        {
            let mut allowed = exp.clone();
            if v.default_value
                .as_ref()
                .is_some_and(|d| d.kind != ValueKind::Null)
                && exp.non_null
            {
                allowed.non_null = false;
            }
            if !v.ty.is_compatible(&allowed) {
                self.error(
                    value.pos,
                    format!(
                        "Variable \"{value}\" of type \"{}\" used in position expecting type \"{exp}\".",
                        v.ty
                    ),
                );
            }
        }
    }

    fn on_variable(&mut self, v: &'a VariableDefinition) {
        // KnownTypeNames
        if self.schema.ty(v.ty.name()).is_none() {
            self.error(v.pos, format!("Unknown type \"{}\".", v.ty.name()));
        }
    }

    // ---- rule helpers ----

    fn unique_args(&mut self, args: &'a [Argument]) {
        let mut seen: HashSet<&str> = HashSet::new();
        for a in args {
            if !seen.insert(&a.name) {
                self.error(
                    a.pos,
                    format!("There can be only one argument named \"{}\".", a.name),
                );
            }
        }
    }

    fn suggested_type_names(&self, parent: &Definition, name: &str) -> Vec<String> {
        if !parent.is_abstract_type() {
            return Vec::new();
        }
        let mut objects: Vec<String> = Vec::new();
        let mut interfaces: Vec<String> = Vec::new();
        let mut usage: HashMap<String, usize> = HashMap::new();
        for pt in self.schema.possible_types(&parent.name) {
            if pt.field(name).is_none() {
                continue;
            }
            objects.push(pt.name.clone());
            for pi in &pt.interfaces {
                if self.schema.ty(pi).is_some_and(|i| i.field(name).is_some()) {
                    let n = usage.entry(pi.clone()).or_default();
                    if *n == 0 {
                        interfaces.push(pi.clone());
                    }
                    *n += 1;
                }
            }
        }
        interfaces.extend(objects);
        let count = |t: &String| usage.get(t).copied().unwrap_or(0);
        interfaces.sort_by(|a, b| count(b).cmp(&count(a)).then_with(|| a.cmp(b)));
        interfaces
    }

    fn spread_possible(&self, parent: &Definition, fragment_type: &str) -> bool {
        let parents: Vec<&str> = match parent.kind.as_str() {
            OBJECT => vec![parent.name.as_str()],
            INTERFACE | UNION => self
                .schema
                .possible_types(&parent.name)
                .map(|d| d.name.as_str())
                .collect(),
            _ => return true,
        };
        let Some(ft) = self.schema.ty(fragment_type) else {
            return true;
        };
        if !ft.is_composite_type() {
            return true;
        }
        self.schema
            .possible_types(&ft.name)
            .any(|d| parents.contains(&d.name.as_str()))
    }

    fn depth_field(&self, f: &'a Field, visited: &mut HashSet<&'a str>, mut depth: usize) -> bool {
        if matches!(
            f.name.as_str(),
            "fields" | "interfaces" | "possibleTypes" | "inputFields"
        ) {
            depth += 1;
            if depth >= 3 {
                return true;
            }
        }
        self.depth_set(&f.selection_set, visited, depth)
    }

    fn depth_set(
        &self,
        set: &'a [Selection],
        visited: &mut HashSet<&'a str>,
        depth: usize,
    ) -> bool {
        for s in set {
            let deep = match s {
                Selection::Field(f) => self.depth_field(f, visited, depth),
                Selection::FragmentSpread(sp) => {
                    if visited.contains(sp.name.as_str()) {
                        false
                    } else if let Some(fd) = self.fragment(&sp.name) {
                        visited.insert(&sp.name);
                        let r = self.depth_set(&fd.selection_set, visited, depth);
                        visited.remove(sp.name.as_str());
                        r
                    } else {
                        false
                    }
                }
                Selection::InlineFragment(i) => self.depth_set(&i.selection_set, visited, depth),
            };
            if deep {
                return true;
            }
        }
        false
    }

    fn top_fields(&self, set: &'a [Selection]) -> Vec<(String, At)> {
        fn walk<'a>(
            w: &Walker<'a>,
            set: &'a [Selection],
            out: &mut Vec<(String, At)>,
            seen: &mut HashSet<&'a str>,
        ) {
            for s in set {
                match s {
                    Selection::Field(f) => out.push((f.name.clone(), f.pos)),
                    Selection::InlineFragment(i) => walk(w, &i.selection_set, out, seen),
                    Selection::FragmentSpread(sp) => {
                        let Some(fd) = w.fragment(&sp.name) else {
                            return;
                        };
                        if seen.insert(&fd.name) {
                            walk(w, &fd.selection_set, out, seen);
                        }
                    }
                }
            }
        }
        let mut all = Vec::new();
        walk(self, set, &mut all, &mut HashSet::new());
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .collect()
    }

    fn fragment_cycles(
        &mut self,
        f: &'a FragmentDefinition,
        path: &mut Vec<&'a FragmentSpread>,
        index: &mut HashMap<&'a str, usize>,
    ) {
        if !self.visited_frags.insert(f.name.as_str()) {
            return;
        }
        let spreads = fragment_spreads(&f.selection_set);
        if spreads.is_empty() {
            return;
        }
        index.insert(&f.name, path.len());
        for s in spreads {
            let cycle = index.get(s.name.as_str()).copied();
            path.push(s);
            match cycle {
                None => {
                    if let Some(sf) = self.fragment(&s.name) {
                        self.fragment_cycles(sf, path, index);
                    }
                }
                Some(i) => {
                    let names: Vec<String> = path[i..path.len() - 1]
                        .iter()
                        .map(|fs| format!("\"{}\"", fs.name))
                        .collect();
                    let via = if names.is_empty() {
                        String::new()
                    } else {
                        format!(" via {}", names.join(", "))
                    };
                    self.error(
                        s.pos,
                        format!("Cannot spread fragment \"{}\" within itself{via}.", s.name),
                    );
                }
            }
            path.pop();
        }
        index.remove(f.name.as_str());
    }

    fn values_of_correct_type(&mut self, value: &'a Value, exp: &'a Type, def: &'a Definition) {
        if value.kind == ValueKind::Null && exp.non_null {
            self.error(
                value.pos,
                format!("Expected value of type \"{exp}\", found {value}."),
            );
        }
        if def.kind == SCALAR
            && !matches!(
                def.name.as_str(),
                "Int" | "Float" | "String" | "Boolean" | "ID"
            )
        {
            return;
        }
        let enums: Vec<&str> = if def.kind == ENUM {
            def.enum_values.iter().map(|v| v.name.as_str()).collect()
        } else {
            Vec::new()
        };
        if !self.value_converts(value) {
            let m = unexpected_type(value, exp, def);
            self.error(value.pos, m);
        }
        let one_of = |names: &[&str]| names.contains(&def.name.as_str());
        match value.kind {
            ValueKind::Null | ValueKind::Variable => {}
            ValueKind::List => {
                if exp.elem.is_none() {
                    let m = unexpected_type(value, exp, def);
                    self.error(value.pos, m);
                }
            }
            ValueKind::Int => {
                if !one_of(&["Int", "Float", "ID"]) {
                    let m = unexpected_type(value, exp, def);
                    self.error(value.pos, m);
                }
            }
            ValueKind::Float => {
                if !one_of(&["Float"]) {
                    let m = unexpected_type(value, exp, def);
                    self.error(value.pos, m);
                }
            }
            ValueKind::String | ValueKind::Block => {
                if def.kind == ENUM {
                    let m = format!(
                        "Enum \"{exp}\" cannot represent non-enum value: {value}.{}",
                        suggest_quoted("Did you mean the enum value", &value.raw, &enums)
                    );
                    self.error(value.pos, m);
                } else if !one_of(&["String", "ID"]) {
                    let m = unexpected_type(value, exp, def);
                    self.error(value.pos, m);
                }
            }
            ValueKind::Enum => {
                if def.kind != ENUM {
                    let m = unexpected_type(value, exp, def)
                        + &suggest_unquoted("Did you mean the enum value", &value.raw, &enums);
                    self.error(value.pos, m);
                } else if !def.enum_values.iter().any(|v| v.name == value.raw) {
                    let m = format!(
                        "Value \"{value}\" does not exist in \"{exp}\" enum.{}",
                        suggest_quoted("Did you mean the enum value", &value.raw, &enums)
                    );
                    self.error(value.pos, m);
                }
            }
            ValueKind::Boolean => {
                if !one_of(&["Boolean"]) {
                    let m = unexpected_type(value, exp, def);
                    self.error(value.pos, m);
                }
            }
            ValueKind::Object => {
                for field in &def.fields {
                    if field.ty.non_null
                        && value.child(&field.name).is_none()
                        && field.default_value.is_none()
                    {
                        self.error(
                            value.pos,
                            format!(
                                "Field \"{}.{}\" of required type \"{}\" was not provided.",
                                def.name, field.name, field.ty
                            ),
                        );
                    }
                }
                for d in &def.directives {
                    if d.name != "oneOf" {
                        continue;
                    }
                    if value.children.len() != 1 {
                        self.error(
                            value.pos,
                            format!(
                                "OneOf Input Object \"{}\" must specify exactly one key.",
                                def.name
                            ),
                        );
                        continue;
                    }
                    let fv = &value.children[0].value;
                    if fv.kind == ValueKind::Null {
                        let first = def.fields.first().map(|f| f.name.as_str()).unwrap_or("");
                        self.error(
                            fv.pos,
                            format!("Field \"{}.{first}\" must be non-null.", def.name),
                        );
                        continue;
                    }
                    if let Some(v) = self.variable_of(fv)
                        && !v.ty.non_null
                    {
                        self.error(
                            fv.pos,
                            format!(
                                "Variable \"{}\" must be non-nullable to be used for OneOf Input Object \"{}\".",
                                v.variable, def.name
                            ),
                        );
                    }
                }
                for c in &value.children {
                    if def.field(&c.name).is_none() {
                        let names: Vec<&str> = def.fields.iter().map(|f| f.name.as_str()).collect();
                        let m = format!(
                            "Field \"{}\" is not defined by type \"{}\".{}",
                            c.name,
                            def.name,
                            suggest_quoted("Did you mean", &c.name, &names)
                        );
                        self.error(c.pos, m);
                    }
                }
            }
        }
    }

    /// Whether gqlparser's `Value.Value(nil)` converts `value` without an error.
    fn value_converts(&self, value: &Value) -> bool {
        match value.kind {
            ValueKind::Variable => self
                .variable_of(value)
                .and_then(|v| v.default_value.as_ref())
                .is_none_or(|d| self.value_converts(d)),
            ValueKind::Int => value.raw.parse::<i64>().is_ok(),
            ValueKind::Float => value.raw.parse::<f64>().is_ok_and(f64::is_finite),
            ValueKind::Boolean => matches!(
                value.raw.as_str(),
                "1" | "t"
                    | "T"
                    | "TRUE"
                    | "true"
                    | "True"
                    | "0"
                    | "f"
                    | "F"
                    | "FALSE"
                    | "false"
                    | "False"
            ),
            ValueKind::List | ValueKind::Object => {
                value.children.iter().all(|c| self.value_converts(&c.value))
            }
            _ => true,
        }
    }

    // ---- OverlappingFieldsCanBeMerged ----

    fn overlapping_within(&mut self, set: &'a [Selection]) {
        if set.is_empty() {
            return;
        }
        let (fields, spreads) = fields_and_spreads(set);
        let mut conflicts = Vec::new();
        self.conflicts_within(&mut conflicts, &fields);
        self.compared_fragments.clear();
        for (i, a) in spreads.iter().enumerate() {
            self.conflicts_fields_fragment(&mut conflicts, false, &fields, a);
            for b in &spreads[i + 1..] {
                self.conflicts_between_fragments(&mut conflicts, false, a, b);
            }
        }
        for c in conflicts {
            let mut text = String::new();
            c.write(&mut text);
            self.error(
                c.pos,
                format!(
                    "Fields \"{}\" conflict because {text}. Use different aliases on the fields to fetch both if this was intentional.",
                    c.response_name
                ),
            );
        }
    }

    fn conflicts_fields_fragment(
        &mut self,
        out: &mut Vec<Conflict>,
        exclusive: bool,
        fields: &FieldMap<'a>,
        spread: &'a FragmentSpread,
    ) {
        if !self.compared_fragments.insert(spread.name.clone()) {
            return;
        }
        let Some(fd) = self.fragment(&spread.name) else {
            return;
        };
        let (fields_b, spreads_b) = fields_and_spreads(&fd.selection_set);
        if same_field_map(fields, &fields_b) {
            return;
        }
        self.conflicts_between(out, exclusive, fields, &fields_b);
        for s in spreads_b {
            if s.name == spread.name {
                continue;
            }
            self.conflicts_fields_fragment(out, exclusive, fields, s);
        }
    }

    fn conflicts_between_fragments(
        &mut self,
        out: &mut Vec<Conflict>,
        exclusive: bool,
        a: &'a FragmentSpread,
        b: &'a FragmentSpread,
    ) {
        if a.name == b.name {
            return;
        }
        let known = self
            .compared_pairs
            .get(&a.name)
            .and_then(|m| m.get(&b.name))
            .copied();
        if let Some(was_exclusive) = known
            && (exclusive || !was_exclusive)
        {
            return;
        }
        for (x, y) in [(&a.name, &b.name), (&b.name, &a.name)] {
            self.compared_pairs
                .entry(x.clone())
                .or_default()
                .insert(y.clone(), exclusive);
        }
        let (Some(fa), Some(fb)) = (self.fragment(&a.name), self.fragment(&b.name)) else {
            return;
        };
        let (fields_a, spreads_a) = fields_and_spreads(&fa.selection_set);
        let (fields_b, spreads_b) = fields_and_spreads(&fb.selection_set);
        self.conflicts_between(out, exclusive, &fields_a, &fields_b);
        for s in spreads_b {
            self.conflicts_between_fragments(out, exclusive, a, s);
        }
        for s in spreads_a {
            self.conflicts_between_fragments(out, exclusive, s, b);
        }
    }

    fn conflicts_between_sub_selections(
        &mut self,
        exclusive: bool,
        a: &'a [Selection],
        b: &'a [Selection],
    ) -> Vec<Conflict> {
        let mut out = Vec::new();
        let (fields_a, spreads_a) = fields_and_spreads(a);
        let (fields_b, spreads_b) = fields_and_spreads(b);
        self.conflicts_between(&mut out, exclusive, &fields_a, &fields_b);
        for s in &spreads_b {
            self.compared_fragments.clear();
            self.conflicts_fields_fragment(&mut out, exclusive, &fields_a, s);
        }
        for s in &spreads_a {
            self.compared_fragments.clear();
            self.conflicts_fields_fragment(&mut out, exclusive, &fields_b, s);
        }
        for sa in &spreads_a {
            for sb in &spreads_b {
                self.conflicts_between_fragments(&mut out, exclusive, sa, sb);
            }
        }
        out
    }

    fn conflicts_within(&mut self, out: &mut Vec<Conflict>, fields: &FieldMap<'a>) {
        for (_, list) in fields {
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if let Some(c) = self.find_conflict(false, a, b) {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn conflicts_between(
        &mut self,
        out: &mut Vec<Conflict>,
        exclusive: bool,
        a: &FieldMap<'a>,
        b: &FieldMap<'a>,
    ) {
        for (name, list_a) in a {
            let Some((_, list_b)) = b.iter().find(|(n, _)| n == name) else {
                continue;
            };
            for fa in list_a {
                for fb in list_b {
                    if let Some(c) = self.find_conflict(exclusive, fa, fb) {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn find_conflict(
        &mut self,
        parent_exclusive: bool,
        a: &'a Field,
        b: &'a Field,
    ) -> Option<Conflict> {
        let (def_a, parent_a) = self.note(a);
        let (def_b, parent_b) = self.note(b);
        let (pa, pb) = (parent_a?, parent_b?);
        let exclusive = parent_exclusive
            || (pa.name != pb.name
                && pa.kind == OBJECT
                && pb.kind == OBJECT
                && def_a.is_some()
                && def_b.is_some());
        let response_name = a.response_name().to_string();
        if !exclusive {
            if a.name != b.name {
                return Some(Conflict::leaf(
                    response_name,
                    format!("\"{}\" and \"{}\" are different fields", a.name, b.name),
                    b.pos,
                ));
            }
            if !same_arguments(&a.arguments, &b.arguments) {
                return Some(Conflict::leaf(
                    response_name,
                    "they have differing arguments".to_string(),
                    b.pos,
                ));
            }
        }
        if let (Some(da), Some(db)) = (def_a, def_b)
            && self.types_conflict(&da.ty, &db.ty)
        {
            return Some(Conflict::leaf(
                response_name,
                format!(
                    "they return conflicting types \"{}\" and \"{}\"",
                    da.ty, db.ty
                ),
                b.pos,
            ));
        }
        let sub =
            self.conflicts_between_sub_selections(exclusive, &a.selection_set, &b.selection_set);
        if sub.is_empty() {
            return None;
        }
        Some(Conflict {
            response_name,
            message: String::new(),
            sub,
            pos: b.pos,
        })
    }

    fn types_conflict(&self, t1: &Type, t2: &Type) -> bool {
        match (&t1.elem, &t2.elem) {
            (Some(a), Some(b)) => return self.types_conflict(a, b),
            (Some(_), None) | (None, Some(_)) => return true,
            (None, None) => {}
        }
        if t1.non_null != t2.non_null {
            return true;
        }
        match (
            self.schema.ty(&t1.named_type),
            self.schema.ty(&t2.named_type),
        ) {
            (Some(a), Some(b)) if a.is_leaf_type() && b.is_leaf_type() => a.name != b.name,
            _ => false,
        }
    }
}

/// The arguments `given` that `defs` does not declare, each with its "Did you mean" suffix
/// (KnownArgumentNames, for fields and directives alike).
fn unknown_arguments<'b>(
    defs: &'b [ArgumentDefinition],
    given: &'b [Argument],
) -> impl Iterator<Item = (&'b Argument, String)> {
    given
        .iter()
        .filter(|a| !defs.iter().any(|d| d.name == a.name))
        .map(|a| {
            let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            (a, suggest_quoted("Did you mean", &a.name, &names))
        })
}

/// The required arguments (non-null, without a default) `given` leaves out
/// (ProvidedRequiredArguments, for fields and directives alike).
fn missing_arguments<'b>(
    defs: &'b [ArgumentDefinition],
    given: &'b [Argument],
) -> impl Iterator<Item = &'b ArgumentDefinition> {
    defs.iter().filter(|d| {
        d.ty.non_null && d.default_value.is_none() && !given.iter().any(|a| a.name == d.name)
    })
}

/// Fields by response name, in the order names first appear.
type FieldMap<'a> = Vec<(String, Vec<&'a Field>)>;

fn fields_and_spreads(set: &[Selection]) -> (FieldMap<'_>, Vec<&FragmentSpread>) {
    fn walk<'a>(
        set: &'a [Selection],
        fields: &mut FieldMap<'a>,
        spreads: &mut Vec<&'a FragmentSpread>,
    ) {
        for s in set {
            match s {
                Selection::Field(f) => {
                    let name = f.response_name();
                    match fields.iter_mut().find(|(n, _)| n == name) {
                        Some((_, list)) => list.push(f),
                        None => fields.push((name.to_string(), vec![f])),
                    }
                }
                Selection::InlineFragment(i) => walk(&i.selection_set, fields, spreads),
                Selection::FragmentSpread(sp) => spreads.push(sp),
            }
        }
    }
    let mut fields = Vec::new();
    let mut spreads = Vec::new();
    walk(set, &mut fields, &mut spreads);
    (fields, spreads)
}

/// gqlparser compares two field maps with `reflect.DeepEqual`; its fields are the same nodes
/// exactly when the maps are equal.
fn same_field_map(a: &FieldMap<'_>, b: &FieldMap<'_>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, la), (nb, lb))| {
            na == nb && la.len() == lb.len() && la.iter().zip(lb).all(|(x, y)| std::ptr::eq(*x, *y))
        })
}

fn same_arguments(a: &[Argument], b: &[Argument]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.name == y.name && x.value.kind == y.value.kind && x.value.raw == y.value.raw
            })
        })
}

/// The fragment spreads in a selection set, at any depth (gqlparser's visiting order).
fn fragment_spreads(set: &[Selection]) -> Vec<&FragmentSpread> {
    let mut spreads = Vec::new();
    let mut stack = vec![set];
    while let Some(set) = stack.pop() {
        for s in set {
            match s {
                Selection::FragmentSpread(sp) => spreads.push(sp),
                Selection::Field(f) => stack.push(&f.selection_set),
                Selection::InlineFragment(i) => stack.push(&i.selection_set),
            }
        }
    }
    spreads
}

struct Conflict {
    response_name: String,
    message: String,
    sub: Vec<Conflict>,
    pos: At,
}

impl Conflict {
    fn leaf(response_name: String, message: String, pos: At) -> Conflict {
        Conflict {
            response_name,
            message,
            sub: Vec::new(),
            pos,
        }
    }

    fn write(&self, out: &mut String) {
        if self.sub.is_empty() {
            out.push_str(&self.message);
            return;
        }
        for (i, s) in self.sub.iter().enumerate() {
            out.push_str("subfields \"");
            out.push_str(&s.response_name);
            out.push_str("\" conflict because ");
            s.write(out);
            if i + 1 != self.sub.len() {
                out.push_str(" and ");
            }
        }
    }
}

/// gqlparser's `unexpectedTypeMessageOnly`.
fn unexpected_type(value: &Value, exp: &Type, def: &Definition) -> String {
    match exp.to_string().as_str() {
        "Int" | "Int!" => {
            if go_int_out_of_range(&value.raw, i32::MIN as i64, i32::MAX as i64) {
                format!("Int cannot represent non 32-bit signed integer value: {value}")
            } else {
                format!("Int cannot represent non-integer value: {value}")
            }
        }
        "String" | "String!" | "[String]" => {
            format!("String cannot represent a non string value: {value}")
        }
        "Boolean" | "Boolean!" => format!("Boolean cannot represent a non boolean value: {value}"),
        "Float" | "Float!" => format!("Float cannot represent non numeric value: {value}"),
        "ID" | "ID!" => format!("ID cannot represent a non-string and non-integer value: {value}"),
        _ if def.kind == ENUM => {
            format!("Enum \"{exp}\" cannot represent non-enum value: {value}.")
        }
        _ => format!("Expected value of type \"{exp}\", found {value}."),
    }
}

/// Go's `strconv.ParseInt` syntax: an optional sign and decimal digits.
fn go_int_syntax(raw: &str) -> bool {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `raw` is integer syntax whose value lies outside `min..=max` (Go's `ErrRange`).
fn go_int_out_of_range(raw: &str, min: i64, max: i64) -> bool {
    if !go_int_syntax(raw) {
        return false;
    }
    match raw.parse::<i128>() {
        Ok(n) => n < min as i128 || n > max as i128,
        Err(_) => true,
    }
}

// ---- suggestions ("Did you mean ...?") ----

fn suggest_quoted(prefix: &str, typed: &str, options: &[&str]) -> String {
    let s = suggestion_list(typed, options);
    if s.is_empty() {
        String::new()
    } else {
        format!(" {prefix} {}?", quoted_or_list(&s))
    }
}

fn suggest_unquoted(prefix: &str, typed: &str, options: &[&str]) -> String {
    let s = suggestion_list(typed, options);
    if s.is_empty() {
        String::new()
    } else {
        format!(" {prefix} {}?", or_list(&s))
    }
}

fn quoted_or_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    or_list(&quoted)
}

fn or_list(items: &[String]) -> String {
    let items = &items[..items.len().min(5)];
    if items.len() == 2 {
        return format!("{} or {}", items[0], items[1]);
    }
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i != 0 {
            out.push_str(if i == items.len() - 1 { ", or " } else { ", " });
        }
        out.push_str(item);
    }
    out
}

/// The options close enough to `input` to suggest, nearest first.
fn suggestion_list(input: &str, options: &[&str]) -> Vec<String> {
    let threshold = (input.len() as f64 * 0.4).floor() as usize + 1;
    let mut found: Vec<(usize, String)> = options
        .iter()
        .filter_map(|o| {
            let d = lexical_distance(input, o);
            (d <= threshold).then(|| (d, o.to_string()))
        })
        .collect();
    found.sort_by_key(|(d, _)| *d);
    found.into_iter().map(|(_, o)| o).collect()
}

fn lexical_distance(a: &str, b: &str) -> usize {
    if a == b {
        return 0;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if a == b {
        return 1;
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

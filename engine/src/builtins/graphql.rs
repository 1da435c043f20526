//! `graphql.*`: GraphQL queries and schemas parsed and validated as OPA does it. OPA wraps the
//! Go library gqlparser; its syntax trees, error messages and validation rules are what OPA
//! users see, so `graphql/` follows gqlparser rule for rule (lexer, parser, schema checks and
//! the query validation rules), and the trees have the shape OPA returns.

mod ast;
mod lexer;
mod parser;
mod schema;
mod validate;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use regorus::Value;

use super::Registrar;
use ast::*;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("graphql.parse_query", 1, |a| {
        let text = super::string_arg(a, 1)?;
        let doc =
            parser::parse_query(text).map_err(|e| anyhow::anyhow!(opa_message(&e.to_string())))?;
        Ok(query_value(&doc))
    });
    r.add("graphql.parse_schema", 1, |a| {
        let text = super::string_arg(a, 1)?;
        let doc = parser::parse_schema(text, false)
            .map_err(|e| anyhow::anyhow!(opa_message(&e.to_string())))?;
        Ok(schema_value(&doc))
    });
    r.add("graphql.parse", 2, |a| {
        // OPA numbers these operands 0 and 1 in its type errors.
        let query = query_arg(&a[0], 0)?;
        let built = schema_arg(&a[1], 1)?;
        let (schema_doc, schema) = &*built;
        let schema = schema.as_ref().map_err(|e| {
            anyhow::anyhow!("Error in gqlparser SchemaDocument to Schema conversion: {e}")
        })?;
        check(schema, &query)?;
        Ok(Value::from(vec![
            query_value(&query),
            schema_value(schema_doc),
        ]))
    });
    r.add("graphql.parse_and_verify", 2, |a| {
        let verified = (|| {
            let query = query_arg(&a[0], 1)?;
            let built = schema_arg(&a[1], 2)?;
            let (schema_doc, schema) = &*built;
            check(schema.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?, &query)?;
            anyhow::Ok(Value::from(vec![
                Value::Bool(true),
                query_value(&query),
                schema_value(schema_doc),
            ]))
        })();
        Ok(verified.unwrap_or_else(|_| {
            Value::from(vec![
                Value::Bool(false),
                Value::new_object(),
                Value::new_object(),
            ])
        }))
    });
    r.add("graphql.is_valid", 2, |a| {
        let valid = (|| {
            let query = query_arg(&a[0], 1)?;
            let built = schema_arg(&a[1], 2)?;
            check(
                built.1.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?,
                &query,
            )
        })();
        Ok(Value::Bool(valid.is_ok()))
    });
    r.add("graphql.schema_is_valid", 1, |a| {
        let valid = schema_arg(&a[0], 1).is_ok_and(|b| b.1.is_ok());
        Ok(Value::Bool(valid))
    });
}

/// A gqlparser error: a message and where it happened.
#[derive(Debug, Clone)]
pub struct GqlError {
    pub message: String,
    /// `None`: no location; `Some(None)`: gqlparser's unknown location (-1:-1).
    loc: Option<Option<Pos>>,
}

impl GqlError {
    /// An error at `pos` (an unknown position prints as -1:-1, as gqlparser's `ErrorPosf`).
    pub fn at(pos: At, message: String) -> GqlError {
        GqlError {
            message,
            loc: Some(pos),
        }
    }

    /// A validation rule's error (without a position when the node has none).
    pub fn rule(pos: At, message: String) -> GqlError {
        GqlError {
            message,
            loc: pos.map(Some),
        }
    }

    pub fn plain(message: String) -> GqlError {
        GqlError { message, loc: None }
    }
}

impl std::fmt::Display for GqlError {
    /// gqlparser's `Error.Error()`: `file:line:column: message`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.loc {
            None => write!(f, "input: {}", self.message),
            Some(None) => write!(f, "input:-1:-1: {}", self.message),
            Some(Some(p)) => {
                let file = if p.prelude {
                    "prelude.graphql"
                } else {
                    "input"
                };
                write!(f, "{file}:{}:{}: {}", p.line, p.column, self.message)
            }
        }
    }
}

/// OPA's `formatGqlParserError`: the first location moved to the end of the message.
fn opa_message(text: &str) -> String {
    let parts: Vec<&str> = text.splitn(4, ':').collect();
    if parts.len() >= 4
        && let (Ok(row), Ok(col)) = (parts[1].parse::<u64>(), parts[2].parse::<u64>())
    {
        let msg = parts[3].trim_start_matches(' ');
        let msg = msg.strip_suffix(".\n").unwrap_or(msg);
        return format!("{msg} in GraphQL string at location {row}:{col}");
    }
    format!("GraphQL parse error: {text}")
}

/// Validate `query` against `schema`; every error, as OPA words the list.
fn check(schema: &schema::Schema, query: &QueryDocument) -> anyhow::Result<()> {
    let errs = validate::validate(schema, query);
    if errs.is_empty() {
        return Ok(());
    }
    let text: String = errs.iter().map(|e| format!("{e}\n")).collect();
    anyhow::bail!(opa_message(&text))
}

fn query_arg(v: &Value, pos: usize) -> anyhow::Result<QueryDocument> {
    match v {
        Value::String(s) => {
            parser::parse_query(s).map_err(|e| anyhow::anyhow!(opa_message(&e.to_string())))
        }
        Value::Object(_) => decode::query_document(v),
        other => operand_type(pos, other),
    }
}

/// A schema document and the schema built from it (or why it could not be).
type Built = Rc<(SchemaDocument, Result<schema::Schema, GqlError>)>;

thread_local! {
    /// Schemas by their text: a policy checks every request against the same few.
    static SCHEMAS: RefCell<Vec<(String, Built)>> =
        const { RefCell::new(Vec::new()) };
}

const CACHED: usize = 8;

/// The schema document an argument holds, and the schema built from it (or why not).
fn schema_arg(v: &Value, pos: usize) -> anyhow::Result<Built> {
    let doc = match v {
        Value::String(s) => {
            if let Some(hit) = SCHEMAS.with(|c| {
                c.borrow()
                    .iter()
                    .find(|(k, _)| **k == **s)
                    .map(|(_, v)| v.clone())
            }) {
                return Ok(hit);
            }
            let doc = parser::parse_schema(s, false)
                .map_err(|e| anyhow::anyhow!(opa_message(&e.to_string())))?;
            let built = Rc::new({
                let schema = schema::build(&doc);
                (doc, schema)
            });
            SCHEMAS.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() == CACHED {
                    c.remove(0);
                }
                c.push((s.to_string(), built.clone()));
            });
            return Ok(built);
        }
        Value::Object(_) => decode::schema_document(v)?,
        other => return operand_type(pos, other),
    };
    let schema = schema::build(&doc);
    Ok(Rc::new((doc, schema)))
}

fn operand_type<T>(pos: usize, got: &Value) -> anyhow::Result<T> {
    anyhow::bail!(
        "operand {pos} must be one of {{string, object}} but got {}",
        crate::decision::type_name(got)
    )
}

// ---- syntax trees as OPA returns them ----

/// An object built as OPA prunes gqlparser's serialised structs: `null`s, empty arrays and
/// empty objects are left out; strings, numbers and booleans always stay.
#[derive(Default)]
struct Obj(BTreeMap<Value, Value>);

impl Obj {
    fn put(mut self, key: &str, v: Value) -> Obj {
        let keep = match &v {
            Value::Null | Value::Undefined => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if keep {
            self.0.insert(Value::from(key), v);
        }
        self
    }
    fn s(self, key: &str, v: &str) -> Obj {
        self.put(key, Value::from(v))
    }
    fn b(self, key: &str, v: bool) -> Obj {
        self.put(key, Value::Bool(v))
    }
    fn done(self) -> Value {
        Value::from(self.0)
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> Value {
    let values: Vec<Value> = items
        .iter()
        .map(f)
        .filter(|v| !matches!(v, Value::Object(o) if o.is_empty()))
        .collect();
    Value::from(values)
}

fn strings(items: &[String]) -> Value {
    Value::from(
        items
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}

fn query_value(doc: &QueryDocument) -> Value {
    Obj::default()
        .put("Operations", list(&doc.operations, operation_value))
        .put("Fragments", list(&doc.fragments, fragment_value))
        .done()
}

fn operation_value(op: &OperationDefinition) -> Value {
    Obj::default()
        .s("Operation", &op.operation)
        .s("Name", &op.name)
        .put(
            "VariableDefinitions",
            list(&op.variable_definitions, variable_value),
        )
        .put("Directives", list(&op.directives, directive_value))
        .put("SelectionSet", list(&op.selection_set, selection_value))
        .done()
}

fn variable_value(v: &VariableDefinition) -> Value {
    Obj::default()
        .s("Variable", &v.variable)
        .put("Type", type_value(&v.ty))
        .put("DefaultValue", opt(&v.default_value, value_value))
        .put("Directives", list(&v.directives, directive_value))
        .b("Used", false)
        .done()
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> Value) -> Value {
    v.as_ref().map(f).unwrap_or(Value::Null)
}

fn selection_value(s: &Selection) -> Value {
    match s {
        Selection::Field(f) => Obj::default()
            .s("Alias", &f.alias)
            .s("Name", &f.name)
            .put("Arguments", list(&f.arguments, argument_value))
            .put("Directives", list(&f.directives, directive_value))
            .put("SelectionSet", list(&f.selection_set, selection_value))
            .done(),
        Selection::FragmentSpread(f) => Obj::default()
            .s("Name", &f.name)
            .put("Directives", list(&f.directives, directive_value))
            .done(),
        Selection::InlineFragment(f) => Obj::default()
            .s("TypeCondition", &f.type_condition)
            .put("Directives", list(&f.directives, directive_value))
            .put("SelectionSet", list(&f.selection_set, selection_value))
            .done(),
    }
}

fn fragment_value(f: &FragmentDefinition) -> Value {
    Obj::default()
        .s("Name", &f.name)
        .put(
            "VariableDefinition",
            list(&f.variable_definition, variable_value),
        )
        .s("TypeCondition", &f.type_condition)
        .put("Directives", list(&f.directives, directive_value))
        .put("SelectionSet", list(&f.selection_set, selection_value))
        .done()
}

fn argument_value(a: &Argument) -> Value {
    Obj::default()
        .s("Name", &a.name)
        .put("Value", value_value(&a.value))
        .done()
}

fn directive_value(d: &Directive) -> Value {
    Obj::default()
        .s("Name", &d.name)
        .put("Arguments", list(&d.arguments, argument_value))
        .s("Location", "")
        .done()
}

fn value_value(v: &ast::Value) -> Value {
    Obj::default()
        .s("Raw", &v.raw)
        .put(
            "Children",
            list(&v.children, |c| {
                Obj::default()
                    .s("Name", &c.name)
                    .put("Value", value_value(&c.value))
                    .done()
            }),
        )
        .put("Kind", Value::from(v.kind as i64))
        .b("ExpectedTypeHasDefault", false)
        .done()
}

fn type_value(t: &Type) -> Value {
    Obj::default()
        .s("NamedType", &t.named_type)
        .put(
            "Elem",
            t.elem.as_deref().map(type_value).unwrap_or(Value::Null),
        )
        .b("NonNull", t.non_null)
        .done()
}

fn schema_value(doc: &SchemaDocument) -> Value {
    Obj::default()
        .put("Schema", list(&doc.schema, schema_definition_value))
        .put(
            "SchemaExtension",
            list(&doc.schema_extension, schema_definition_value),
        )
        .put(
            "Directives",
            list(&doc.directives, directive_definition_value),
        )
        .put("Definitions", list(&doc.definitions, definition_value))
        .put("Extensions", list(&doc.extensions, definition_value))
        .done()
}

fn schema_definition_value(s: &SchemaDefinition) -> Value {
    Obj::default()
        .s("Description", &s.description)
        .put("Directives", list(&s.directives, directive_value))
        .put(
            "OperationTypes",
            list(&s.operation_types, |o| {
                Obj::default()
                    .s("Operation", &o.operation)
                    .s("Type", &o.ty)
                    .done()
            }),
        )
        .done()
}

fn definition_value(d: &Definition) -> Value {
    Obj::default()
        .s("Kind", &d.kind)
        .s("Description", &d.description)
        .s("Name", &d.name)
        .put("Directives", list(&d.directives, directive_value))
        .put("Interfaces", strings(&d.interfaces))
        .put("Fields", list(&d.fields, field_definition_value))
        .put("Types", strings(&d.types))
        .put(
            "EnumValues",
            list(&d.enum_values, |e| {
                Obj::default()
                    .s("Description", &e.description)
                    .s("Name", &e.name)
                    .put("Directives", list(&e.directives, directive_value))
                    .done()
            }),
        )
        .b("BuiltIn", d.built_in)
        .done()
}

fn field_definition_value(f: &FieldDefinition) -> Value {
    Obj::default()
        .s("Description", &f.description)
        .s("Name", &f.name)
        .put("Arguments", list(&f.arguments, argument_definition_value))
        .put("DefaultValue", opt(&f.default_value, value_value))
        .put("Type", type_value(&f.ty))
        .put("Directives", list(&f.directives, directive_value))
        .done()
}

fn argument_definition_value(a: &ArgumentDefinition) -> Value {
    Obj::default()
        .s("Description", &a.description)
        .s("Name", &a.name)
        .put("DefaultValue", opt(&a.default_value, value_value))
        .put("Type", type_value(&a.ty))
        .put("Directives", list(&a.directives, directive_value))
        .done()
}

fn directive_definition_value(d: &DirectiveDefinition) -> Value {
    Obj::default()
        .s("Description", &d.description)
        .s("Name", &d.name)
        .put("Arguments", list(&d.arguments, argument_definition_value))
        .put("Locations", strings(&d.locations))
        .b("IsRepeatable", d.is_repeatable)
        .done()
}

/// Syntax trees read back from Rego values, as Go's `encoding/json` fills gqlparser's structs
/// (what OPA does when a policy passes an AST object): absent keys and `null`s leave zero
/// values, unknown keys are ignored, a wrong type is an error.
mod decode {
    use super::ast::*;
    use regorus::Value;

    type R<T> = anyhow::Result<T>;

    fn mismatch<T>(v: &Value, owner: &str, key: &str, go_type: &str) -> R<T> {
        let got = match v {
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) | Value::Set(_) => "array",
            _ => "object",
        };
        anyhow::bail!(
            "json: cannot unmarshal {got} into Go struct field {owner}.{key} of type {go_type}"
        )
    }

    fn field<'v>(obj: &'v Value, key: &str) -> Option<&'v Value> {
        match &obj[key] {
            Value::Undefined | Value::Null => None,
            v => Some(v),
        }
    }

    fn string(obj: &Value, owner: &str, key: &str) -> R<String> {
        match field(obj, key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.to_string()),
            Some(v) => mismatch(v, owner, key, "string"),
        }
    }

    fn boolean(obj: &Value, owner: &str, key: &str) -> R<bool> {
        match field(obj, key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => mismatch(v, owner, key, "bool"),
        }
    }

    fn items<'v>(obj: &'v Value, owner: &str, key: &str) -> R<Vec<&'v Value>> {
        match field(obj, key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.iter().filter(|v| **v != Value::Null).collect()),
            Some(Value::Set(s)) => Ok(s.iter().collect()),
            Some(v) => mismatch(v, owner, key, "[]"),
        }
    }

    fn objects<T>(obj: &Value, owner: &str, key: &str, f: impl Fn(&Value) -> R<T>) -> R<Vec<T>> {
        items(obj, owner, key)?
            .into_iter()
            .map(|v| match v {
                Value::Object(_) => f(v),
                other => mismatch(other, owner, key, "struct"),
            })
            .collect()
    }

    fn names(obj: &Value, owner: &str, key: &str) -> R<Vec<String>> {
        items(obj, owner, key)?
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.to_string()),
                other => mismatch(other, owner, key, "string"),
            })
            .collect()
    }

    fn object<T: Default>(
        obj: &Value,
        owner: &str,
        key: &str,
        f: impl Fn(&Value) -> R<T>,
    ) -> R<Option<T>> {
        match field(obj, key) {
            None => Ok(None),
            Some(v @ Value::Object(_)) => f(v).map(Some),
            Some(v) => mismatch(v, owner, key, "struct"),
        }
    }

    pub fn query_document(v: &Value) -> R<QueryDocument> {
        Ok(QueryDocument {
            operations: objects(v, "QueryDocument", "Operations", operation)?,
            fragments: objects(v, "QueryDocument", "Fragments", fragment)?,
        })
    }

    fn operation(v: &Value) -> R<OperationDefinition> {
        Ok(OperationDefinition {
            operation: string(v, "OperationDefinition", "Operation")?,
            name: string(v, "OperationDefinition", "Name")?,
            variable_definitions: objects(
                v,
                "OperationDefinition",
                "VariableDefinitions",
                variable,
            )?,
            directives: objects(v, "OperationDefinition", "Directives", directive)?,
            selection_set: selections(v)?,
            pos: None,
        })
    }

    fn variable(v: &Value) -> R<VariableDefinition> {
        Ok(VariableDefinition {
            variable: string(v, "VariableDefinition", "Variable")?,
            ty: object(v, "VariableDefinition", "Type", ty)?.unwrap_or_default(),
            default_value: object(v, "VariableDefinition", "DefaultValue", value)?,
            directives: objects(v, "VariableDefinition", "Directives", directive)?,
            pos: None,
        })
    }

    /// gqlparser decodes each selection as a field first, which any object satisfies: a
    /// fragment read back from an AST object becomes a field, as in OPA.
    fn selections(v: &Value) -> R<Vec<Selection>> {
        let mut out = Vec::new();
        if let Some(Value::Array(a)) = field(v, "SelectionSet") {
            for item in a.iter() {
                if let Ok(f) = as_field(item) {
                    out.push(Selection::Field(f));
                } else if let Ok(s) = as_spread(item) {
                    out.push(Selection::FragmentSpread(s));
                } else if let Ok(i) = as_inline(item) {
                    out.push(Selection::InlineFragment(i));
                }
            }
        } else if let Some(other) = field(v, "SelectionSet") {
            return mismatch(other, "Field", "SelectionSet", "[]json.RawMessage");
        }
        Ok(out)
    }

    fn as_field(v: &Value) -> R<Field> {
        if !matches!(v, Value::Object(_)) {
            anyhow::bail!("not an object");
        }
        Ok(Field {
            alias: string(v, "Field", "Alias")?,
            name: string(v, "Field", "Name")?,
            arguments: objects(v, "Field", "Arguments", argument)?,
            directives: objects(v, "Field", "Directives", directive)?,
            selection_set: selections(v)?,
            pos: None,
        })
    }

    fn as_spread(v: &Value) -> R<FragmentSpread> {
        if !matches!(v, Value::Object(_)) {
            anyhow::bail!("not an object");
        }
        Ok(FragmentSpread {
            name: string(v, "FragmentSpread", "Name")?,
            directives: objects(v, "FragmentSpread", "Directives", directive)?,
            pos: None,
        })
    }

    fn as_inline(v: &Value) -> R<InlineFragment> {
        if !matches!(v, Value::Object(_)) {
            anyhow::bail!("not an object");
        }
        Ok(InlineFragment {
            type_condition: string(v, "InlineFragment", "TypeCondition")?,
            directives: objects(v, "InlineFragment", "Directives", directive)?,
            selection_set: selections(v)?,
            pos: None,
        })
    }

    fn fragment(v: &Value) -> R<FragmentDefinition> {
        Ok(FragmentDefinition {
            name: string(v, "FragmentDefinition", "Name")?,
            variable_definition: objects(v, "FragmentDefinition", "VariableDefinition", variable)?,
            type_condition: string(v, "FragmentDefinition", "TypeCondition")?,
            directives: objects(v, "FragmentDefinition", "Directives", directive)?,
            selection_set: selections(v)?,
            pos: None,
        })
    }

    fn argument(v: &Value) -> R<Argument> {
        Ok(Argument {
            name: string(v, "Argument", "Name")?,
            value: object(v, "Argument", "Value", value)?.unwrap_or_default(),
            pos: None,
        })
    }

    fn directive(v: &Value) -> R<Directive> {
        Ok(Directive {
            name: string(v, "Directive", "Name")?,
            arguments: objects(v, "Directive", "Arguments", argument)?,
            pos: None,
        })
    }

    fn value(v: &Value) -> R<super::ast::Value> {
        let kind = match field(v, "Kind") {
            None => ValueKind::Variable,
            Some(n @ Value::Number(_)) => n
                .as_i64()
                .ok()
                .and_then(ValueKind::from_number)
                .ok_or_else(|| anyhow::anyhow!("json: unknown value kind"))?,
            Some(other) => return mismatch(other, "Value", "Kind", "ast.ValueKind"),
        };
        Ok(super::ast::Value {
            raw: string(v, "Value", "Raw")?,
            children: objects(v, "Value", "Children", |c| {
                Ok(ChildValue {
                    name: string(c, "ChildValue", "Name")?,
                    value: object(c, "ChildValue", "Value", value)?.unwrap_or_default(),
                    pos: None,
                })
            })?,
            kind,
            pos: None,
        })
    }

    fn ty(v: &Value) -> R<Type> {
        Ok(Type {
            named_type: string(v, "Type", "NamedType")?,
            elem: object(v, "Type", "Elem", ty)?.map(Box::new),
            non_null: boolean(v, "Type", "NonNull")?,
            pos: None,
        })
    }

    pub fn schema_document(v: &Value) -> R<SchemaDocument> {
        Ok(SchemaDocument {
            schema: objects(v, "SchemaDocument", "Schema", schema_definition)?,
            schema_extension: objects(v, "SchemaDocument", "SchemaExtension", schema_definition)?,
            directives: objects(v, "SchemaDocument", "Directives", directive_definition)?,
            definitions: objects(v, "SchemaDocument", "Definitions", definition)?,
            extensions: objects(v, "SchemaDocument", "Extensions", definition)?,
        })
    }

    fn schema_definition(v: &Value) -> R<SchemaDefinition> {
        Ok(SchemaDefinition {
            description: string(v, "SchemaDefinition", "Description")?,
            directives: objects(v, "SchemaDefinition", "Directives", directive)?,
            operation_types: objects(v, "SchemaDefinition", "OperationTypes", |o| {
                Ok(OperationTypeDefinition {
                    operation: string(o, "OperationTypeDefinition", "Operation")?,
                    ty: string(o, "OperationTypeDefinition", "Type")?,
                    pos: None,
                })
            })?,
            pos: None,
        })
    }

    fn definition(v: &Value) -> R<Definition> {
        Ok(Definition {
            kind: string(v, "Definition", "Kind")?,
            description: string(v, "Definition", "Description")?,
            name: string(v, "Definition", "Name")?,
            directives: objects(v, "Definition", "Directives", directive)?,
            interfaces: names(v, "Definition", "Interfaces")?,
            fields: objects(v, "Definition", "Fields", field_definition)?,
            types: names(v, "Definition", "Types")?,
            enum_values: objects(v, "Definition", "EnumValues", |e| {
                Ok(EnumValueDefinition {
                    description: string(e, "EnumValueDefinition", "Description")?,
                    name: string(e, "EnumValueDefinition", "Name")?,
                    directives: objects(e, "EnumValueDefinition", "Directives", directive)?,
                })
            })?,
            built_in: boolean(v, "Definition", "BuiltIn")?,
            pos: None,
        })
    }

    fn field_definition(v: &Value) -> R<FieldDefinition> {
        Ok(FieldDefinition {
            description: string(v, "FieldDefinition", "Description")?,
            name: string(v, "FieldDefinition", "Name")?,
            arguments: objects(v, "FieldDefinition", "Arguments", argument_definition)?,
            default_value: object(v, "FieldDefinition", "DefaultValue", value)?,
            ty: object(v, "FieldDefinition", "Type", ty)?.unwrap_or_default(),
            directives: objects(v, "FieldDefinition", "Directives", directive)?,
            pos: None,
        })
    }

    fn argument_definition(v: &Value) -> R<ArgumentDefinition> {
        Ok(ArgumentDefinition {
            description: string(v, "ArgumentDefinition", "Description")?,
            name: string(v, "ArgumentDefinition", "Name")?,
            default_value: object(v, "ArgumentDefinition", "DefaultValue", value)?,
            ty: object(v, "ArgumentDefinition", "Type", ty)?.unwrap_or_default(),
            directives: objects(v, "ArgumentDefinition", "Directives", directive)?,
            pos: None,
        })
    }

    fn directive_definition(v: &Value) -> R<DirectiveDefinition> {
        Ok(DirectiveDefinition {
            description: string(v, "DirectiveDefinition", "Description")?,
            name: string(v, "DirectiveDefinition", "Name")?,
            arguments: objects(v, "DirectiveDefinition", "Arguments", argument_definition)?,
            locations: names(v, "DirectiveDefinition", "Locations")?,
            is_repeatable: boolean(v, "DirectiveDefinition", "IsRepeatable")?,
            pos: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    const SCHEMA: &str = r#"type Query { user(id: ID!): User, me: User }
type User { id: ID!, name: String, role: Role }
enum Role { ADMIN USER }"#;

    fn call(expr: &str) -> anyhow::Result<serde_json::Value> {
        eval(expr)
    }

    fn quoted(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn query_trees_have_opas_shape() {
        // OPA 1.x's tree for this query (graphql/test-graphql-parse-query.yaml's shape): empty
        // lists and nulls are left out; strings, numbers and booleans always stay.
        let got = call(&format!(
            "graphql.parse_query({})",
            quoted("query Q($id: ID! = 1) { user(id: $id) @include(if: true) { ...F } } fragment F on User { name }")
        ))
        .unwrap();
        let value = |kind: i64, raw: &str| json!({"ExpectedTypeHasDefault": false, "Kind": kind, "Raw": raw});
        assert_eq!(
            got,
            json!({
                "Operations": [{
                    "Name": "Q",
                    "Operation": "query",
                    "VariableDefinitions": [{
                        "DefaultValue": value(1, "1"),
                        "Type": {"NamedType": "ID", "NonNull": true},
                        "Used": false,
                        "Variable": "id"
                    }],
                    "SelectionSet": [{
                        "Alias": "user",
                        "Name": "user",
                        "Arguments": [{"Name": "id", "Value": value(0, "id")}],
                        "Directives": [{
                            "Arguments": [{"Name": "if", "Value": value(5, "true")}],
                            "Location": "",
                            "Name": "include"
                        }],
                        "SelectionSet": [{"Name": "F"}]
                    }]
                }],
                "Fragments": [{
                    "Name": "F",
                    "TypeCondition": "User",
                    "SelectionSet": [{"Alias": "name", "Name": "name"}]
                }]
            })
        );
    }

    #[test]
    fn syntax_errors_name_gqlparsers_message_and_location() {
        for (text, want) in [
            (
                "{",
                "Expected Name, found <EOF> in GraphQL string at location 1:2",
            ),
            (
                "{ ...on }",
                "Expected Name, found } in GraphQL string at location 1:9",
            ),
            (
                "\n  { ...MissingOn }\n  fragment MissingOn Type\n",
                "Expected \"on\", found Name \"Type\" in GraphQL string at location 3:22",
            ),
            // A token the lexer refuses is "<Invalid>" where the parser meets it (as OPA 1.7.1
            // answers).
            (
                "{ a(b: 0123) }",
                "Unexpected <Invalid> in GraphQL string at location 1:9",
            ),
            (
                "{ a(b: \"x) }",
                "Unexpected <Invalid> in GraphQL string at location 1:13",
            ),
        ] {
            let err = call(&format!("graphql.parse_query({})", quoted(text))).unwrap_err();
            let got = format!("{err:#}");
            assert!(
                got.trim_end()
                    .ends_with(&format!("graphql.parse_query: {want}")),
                "{text}: {got}"
            );
        }
    }

    #[test]
    fn schemas_are_checked_as_gqlparser_checks_them() {
        let valid = |s: &str| call(&format!("graphql.schema_is_valid({})", quoted(s))).unwrap();
        assert_eq!(valid(SCHEMA), json!(true));
        // Extending a type nobody declared declares it.
        assert_eq!(valid("extend type Query { a: Int }"), json!(true));
        for bad in [
            "type Query { a: Int }\ntype Query { b: Int }",
            "type Query { a: Missing }",
            "type Query { a: In }\ninput In { b: Int }",
            "input In { o: Query }\ntype Query { a(i: In): Int }",
            "interface I { a: Int }\ntype Query implements I { b: Int }",
            "enum E { true }\ntype Query { e: E }",
            "type Query { __a: Int }",
            "type Query { a: Int @unknown }",
            "type Query {",
        ] {
            assert_eq!(valid(bad), json!(false), "{bad}");
        }
    }

    #[test]
    fn queries_are_validated_against_the_schema() {
        let valid = |q: &str| {
            call(&format!(
                "graphql.is_valid({}, {})",
                quoted(q),
                quoted(SCHEMA)
            ))
            .unwrap()
        };
        assert_eq!(valid("{ me { id name role } }"), json!(true));
        assert_eq!(valid("query($i: ID!) { user(id: $i) { id } }"), json!(true));
        for bad in [
            "{ me { nope } }",
            "{ user { id } }",
            "{ me }",
            "{ me { id { x } } }",
            "query($i: ID!) { me { id } }",
            "{ user(id: $undefined) { id } }",
            "{ a: me { id } a: user(id: 1) { id } }",
            "{ me { ...F } } fragment F on User { ...G } fragment G on User { ...F }",
            "{ me { id } } fragment Unused on User { id }",
            "mutation { me { id } }",
            "{ me { id @skip } }",
        ] {
            assert_eq!(valid(bad), json!(false), "{bad}");
        }
        // graphql.parse reports every error, each after the first with its own location.
        let err = call(&format!(
            "graphql.parse({}, {})",
            quoted("{ user { nope } }"),
            quoted(SCHEMA)
        ))
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            // OPA 1.7.1's message, suggestions included.
            text.contains("graphql.parse: Cannot query field \"nope\" on type \"User\". Did you mean \"name\" or \"role\"?\ninput:1:3: Field \"user\" argument \"id\" of type \"ID!\" is required, but it was not provided in GraphQL string at location 1:10"),
            "{text}"
        );
    }

    #[test]
    fn parse_and_verify_answers_instead_of_failing() {
        let got = call(&format!(
            "graphql.parse_and_verify({}, {})",
            quoted("{ nope }"),
            quoted(SCHEMA)
        ))
        .unwrap();
        assert_eq!(got, json!([false, {}, {}]));
        let got = call(&format!(
            "graphql.parse_and_verify({}, {})",
            quoted("{ me { id } }"),
            quoted(SCHEMA)
        ))
        .unwrap();
        assert_eq!(got[0], json!(true));
        assert_eq!(
            got[1]["Operations"][0]["SelectionSet"][0]["Name"],
            json!("me")
        );
        assert_eq!(got[2]["Definitions"][0]["Name"], json!("Query"));
    }

    #[test]
    fn wrong_operand_types_are_worded_as_opa_words_them() {
        // OPA 1.7.1 numbers graphql.parse's operands 0 and 1 here.
        let err = crate::builtins::testutil::eval_with_input(
            "graphql.parse(input.q, \"type Query { a: Int }\")",
            json!({"q": 1}),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "graphql.parse: operand 0 must be one of {string, object} but got number"
            ),
            "{err:#}"
        );
        // The built-ins that answer instead of failing answer false.
        let got = crate::builtins::testutil::eval_with_input(
            "graphql.is_valid(\"{ a }\", input.q)",
            json!({"q": 1}),
        )
        .unwrap();
        assert_eq!(got, json!(false));
    }

    #[test]
    fn trees_given_back_as_objects_are_read_as_text_would_be() {
        let q = quoted("{ me { id } }");
        let s = quoted(SCHEMA);
        let got = call(&format!(
            "[graphql.parse_query({q}), graphql.parse_schema({s})] == graphql.parse(graphql.parse_query({q}), graphql.parse_schema({s}))"
        ))
        .unwrap();
        assert_eq!(got, json!(true));
        let got = call(&format!(
            "graphql.is_valid(graphql.parse_query({}), graphql.parse_schema({s}))",
            quoted("{ me { nope } }")
        ))
        .unwrap();
        assert_eq!(got, json!(false));
    }
}

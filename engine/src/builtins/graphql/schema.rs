//! A schema document made into a schema, checked as gqlparser's `ValidateSchemaDocument`
//! checks it (OPA's `graphql.schema_is_valid` and the schema half of the other built-ins).

use std::collections::HashMap;

use super::GqlError;
use super::ast::*;

/// GraphQL's built-in scalars, directives and introspection types (the spec's, written here
/// without their descriptions, which validation never reads).
const PRELUDE: &str = r#"
scalar Int
scalar Float
scalar String
scalar Boolean
scalar ID
directive @defer(if: Boolean = true, label: String) on FRAGMENT_SPREAD | INLINE_FRAGMENT
directive @include(if: Boolean!) on FIELD | FRAGMENT_SPREAD | INLINE_FRAGMENT
directive @skip(if: Boolean!) on FIELD | FRAGMENT_SPREAD | INLINE_FRAGMENT
directive @deprecated(reason: String = "No longer supported") on FIELD_DEFINITION | ARGUMENT_DEFINITION | INPUT_FIELD_DEFINITION | ENUM_VALUE
directive @specifiedBy(url: String!) on SCALAR
directive @oneOf on INPUT_OBJECT
type __Schema {
  description: String
  types: [__Type!]!
  queryType: __Type!
  mutationType: __Type
  subscriptionType: __Type
  directives: [__Directive!]!
}
type __Type {
  kind: __TypeKind!
  name: String
  description: String
  specifiedByURL: String
  fields(includeDeprecated: Boolean = false): [__Field!]
  interfaces: [__Type!]
  possibleTypes: [__Type!]
  enumValues(includeDeprecated: Boolean = false): [__EnumValue!]
  inputFields(includeDeprecated: Boolean = false): [__InputValue!]
  ofType: __Type
  isOneOf: Boolean
}
enum __TypeKind { SCALAR OBJECT INTERFACE UNION ENUM INPUT_OBJECT LIST NON_NULL }
type __Field {
  name: String!
  description: String
  args(includeDeprecated: Boolean = false): [__InputValue!]!
  type: __Type!
  isDeprecated: Boolean!
  deprecationReason: String
}
type __InputValue {
  name: String!
  description: String
  type: __Type!
  defaultValue: String
  isDeprecated: Boolean!
  deprecationReason: String
}
type __EnumValue {
  name: String!
  description: String
  isDeprecated: Boolean!
  deprecationReason: String
}
type __Directive {
  name: String!
  description: String
  isRepeatable: Boolean!
  locations: [__DirectiveLocation!]!
  args(includeDeprecated: Boolean = false): [__InputValue!]!
}
enum __DirectiveLocation {
  QUERY MUTATION SUBSCRIPTION FIELD FRAGMENT_DEFINITION FRAGMENT_SPREAD INLINE_FRAGMENT
  VARIABLE_DEFINITION SCHEMA SCALAR OBJECT FIELD_DEFINITION ARGUMENT_DEFINITION INTERFACE
  UNION ENUM ENUM_VALUE INPUT_OBJECT INPUT_FIELD_DEFINITION
}
"#;

/// A validated schema: types and directives by name, with the relations queries are checked
/// against.
#[derive(Debug, Default)]
pub struct Schema {
    pub types: HashMap<String, Definition>,
    pub directives: HashMap<String, DirectiveDefinition>,
    /// For each abstract (and object) type, the object types a value of it can be.
    pub possible_types: HashMap<String, Vec<String>>,
    pub query: Option<String>,
    pub mutation: Option<String>,
    pub subscription: Option<String>,
    /// The field every selection may ask for: `__typename: String`.
    pub typename_field: FieldDefinition,
}

impl Schema {
    pub fn ty(&self, name: &str) -> Option<&Definition> {
        self.types.get(name)
    }

    pub fn possible_types(&self, name: &str) -> impl Iterator<Item = &Definition> {
        self.possible_types
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|n| self.types.get(n))
    }

    /// The root type of an operation (`query` also for an empty operation name).
    pub fn root(&self, operation: &str) -> Option<&Definition> {
        let name = match operation {
            "query" | "" => &self.query,
            "mutation" => &self.mutation,
            "subscription" => &self.subscription,
            _ => &None,
        };
        name.as_deref().and_then(|n| self.types.get(n))
    }
}

/// The prelude merged before `doc`, then built and checked, as OPA's `convertSchema` does.
pub fn build(doc: &SchemaDocument) -> Result<Schema, GqlError> {
    // The prelude is parsed once per process; each build starts from a copy.
    static PARSED: std::sync::OnceLock<Result<SchemaDocument, GqlError>> =
        std::sync::OnceLock::new();
    let mut merged = PARSED
        .get_or_init(|| super::parser::parse_schema(PRELUDE, true))
        .clone()
        .map_err(|e| GqlError::plain(format!("prelude: {}", e.message)))?;
    merged.schema.extend(doc.schema.iter().cloned());
    merged
        .schema_extension
        .extend(doc.schema_extension.iter().cloned());
    merged.directives.extend(doc.directives.iter().cloned());
    merged.definitions.extend(doc.definitions.iter().cloned());
    merged.extensions.extend(doc.extensions.iter().cloned());
    validate_document(merged)
}

fn validate_document(sd: SchemaDocument) -> Result<Schema, GqlError> {
    let mut schema = Schema {
        typename_field: FieldDefinition {
            name: "__typename".to_string(),
            ty: Type::named("String", false),
            ..Default::default()
        },
        ..Default::default()
    };
    // Definitions in order, then the types extensions create; `order` keeps that order.
    let mut order: Vec<String> = Vec::new();
    for def in &sd.definitions {
        if schema.types.contains_key(&def.name) {
            return Err(GqlError::at(
                def.pos,
                format!("Cannot redeclare type {}.", def.name),
            ));
        }
        schema.types.insert(def.name.clone(), def.clone());
        order.push(def.name.clone());
    }
    for ext in &sd.extensions {
        let def = match schema.types.get_mut(&ext.name) {
            Some(d) => d,
            None => {
                order.push(ext.name.clone());
                schema.types.entry(ext.name.clone()).or_insert(Definition {
                    kind: ext.kind.clone(),
                    name: ext.name.clone(),
                    pos: ext.pos,
                    ..Default::default()
                })
            }
        };
        if def.kind != ext.kind {
            return Err(GqlError::at(
                ext.pos,
                format!(
                    "Cannot extend type {} because the base type is a {}, not {}.",
                    ext.name, def.kind, ext.kind
                ),
            ));
        }
        def.directives.extend(ext.directives.iter().cloned());
        def.interfaces.extend(ext.interfaces.iter().cloned());
        def.fields.extend(ext.fields.iter().cloned());
        def.types.extend(ext.types.iter().cloned());
        def.enum_values.extend(ext.enum_values.iter().cloned());
    }
    for name in &order {
        let Some(def) = schema.types.get(name) else {
            continue;
        };
        let mut add: Vec<(String, String)> = Vec::new();
        match def.kind.as_str() {
            UNION => {
                for t in &def.types {
                    if schema.types.contains_key(t) {
                        add.push((def.name.clone(), t.clone()));
                    }
                }
            }
            INPUT_OBJECT | OBJECT => {
                for intf in &def.interfaces {
                    add.push((intf.clone(), def.name.clone()));
                }
                add.push((def.name.clone(), def.name.clone()));
            }
            INTERFACE => {
                for intf in &def.interfaces {
                    add.push((intf.clone(), def.name.clone()));
                }
            }
            _ => {}
        }
        for (k, v) in add {
            schema.possible_types.entry(k).or_default().push(v);
        }
    }
    for dir in &sd.directives {
        if schema.directives.contains_key(&dir.name)
            && !matches!(
                dir.name.as_str(),
                "include" | "skip" | "deprecated" | "specifiedBy" | "defer" | "oneOf"
            )
        {
            return Err(GqlError::at(
                dir.pos,
                format!("Cannot redeclare directive {}.", dir.name),
            ));
        }
        schema.directives.insert(dir.name.clone(), dir.clone());
    }
    if sd.schema.len() > 1 {
        return Err(GqlError::at(
            sd.schema[1].pos,
            "Cannot have multiple schema entry points, consider schema extensions instead."
                .to_string(),
        ));
    }
    for def in sd.schema.iter().chain(sd.schema_extension.iter()) {
        for entry in &def.operation_types {
            if !schema.types.contains_key(&entry.ty) {
                return Err(GqlError::at(
                    entry.pos,
                    format!(
                        "Schema root {} refers to a type {} that does not exist.",
                        entry.operation, entry.ty
                    ),
                ));
            }
            let slot = match entry.operation.as_str() {
                "query" => &mut schema.query,
                "mutation" => &mut schema.mutation,
                "subscription" => &mut schema.subscription,
                _ => continue,
            };
            *slot = Some(entry.ty.clone());
        }
        validate_directives(&schema, &def.directives, "SCHEMA", None)?;
    }
    let mut names: Vec<&String> = schema.types.keys().collect();
    names.sort();
    for name in names {
        validate_definition(&schema, &schema.types[name])?;
    }
    let mut names: Vec<&String> = schema.directives.keys().collect();
    names.sort();
    for name in names {
        let dir = &schema.directives[name];
        validate_name(dir.pos, &dir.name)?;
        validate_args(&schema, &dir.arguments, Some(dir))?;
    }
    if sd.schema.is_empty() {
        for (slot, name) in [
            (&mut schema.query, "Query"),
            (&mut schema.mutation, "Mutation"),
            (&mut schema.subscription, "Subscription"),
        ] {
            if slot.is_none() && schema.types.contains_key(name) {
                *slot = Some(name.to_string());
            }
        }
    }
    if let Some(q) = schema.query.clone()
        && let Some(def) = schema.types.get_mut(&q)
    {
        def.fields.push(FieldDefinition {
            name: "__schema".to_string(),
            ty: Type::named("__Schema", true),
            ..Default::default()
        });
        def.fields.push(FieldDefinition {
            name: "__type".to_string(),
            ty: Type::named("__Type", false),
            arguments: vec![ArgumentDefinition {
                name: "name".to_string(),
                ty: Type::named("String", true),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    Ok(schema)
}

fn kind_is(kind: &str, valid: &[&str]) -> bool {
    valid.contains(&kind)
}

fn validate_definition(schema: &Schema, def: &Definition) -> Result<(), GqlError> {
    for field in &def.fields {
        validate_name(field.pos, &field.name)?;
        validate_type_ref(schema, &field.ty)?;
        validate_args(schema, &field.arguments, None)?;
        let location = if def.kind == INPUT_OBJECT {
            "INPUT_FIELD_DEFINITION"
        } else {
            "FIELD_DEFINITION"
        };
        validate_directives(schema, &field.directives, location, None)?;
    }
    for t in &def.types {
        match schema.ty(t) {
            None => {
                return Err(GqlError::at(
                    def.pos,
                    format!("Undefined type {}.", go_quote(t)),
                ));
            }
            Some(td) if td.kind != OBJECT => {
                return Err(GqlError::at(
                    def.pos,
                    format!("{} type {} must be {OBJECT}.", def.kind, go_quote(t)),
                ));
            }
            _ => {}
        }
    }
    for intf in &def.interfaces {
        validate_implements(schema, def, intf)?;
    }
    match def.kind.as_str() {
        OBJECT | INTERFACE => {
            if def.fields.is_empty() {
                return Err(GqlError::at(
                    def.pos,
                    format!("{} {}: must define one or more fields.", def.kind, def.name),
                ));
            }
            for field in &def.fields {
                if let Some(t) = schema.ty(field.ty.name())
                    && !kind_is(&t.kind, &[SCALAR, OBJECT, INTERFACE, UNION, ENUM])
                {
                    return Err(GqlError::at(
                        field.pos,
                        format!(
                            "{} {}: field must be one of SCALAR, OBJECT, INTERFACE, UNION, ENUM.",
                            def.kind, def.name
                        ),
                    ));
                }
            }
        }
        ENUM => {
            if def.enum_values.is_empty() {
                return Err(GqlError::at(
                    def.pos,
                    format!(
                        "{} {}: must define one or more unique enum values.",
                        def.kind, def.name
                    ),
                ));
            }
            for value in &def.enum_values {
                if matches!(value.name.as_str(), "true" | "false" | "null") {
                    return Err(GqlError::at(
                        def.pos,
                        format!("{} {}: non-enum value {}.", def.kind, def.name, value.name),
                    ));
                }
                validate_directives(schema, &value.directives, "ENUM_VALUE", None)?;
            }
        }
        INPUT_OBJECT => {
            if def.fields.is_empty() {
                return Err(GqlError::at(
                    def.pos,
                    format!(
                        "{} {}: must define one or more input fields.",
                        def.kind, def.name
                    ),
                ));
            }
            for field in &def.fields {
                if let Some(t) = schema.ty(field.ty.name())
                    && !kind_is(&t.kind, &[SCALAR, ENUM, INPUT_OBJECT])
                {
                    return Err(GqlError::at(
                        field.pos,
                        format!(
                            "{} {}: field must be one of SCALAR, ENUM, INPUT_OBJECT.",
                            t.kind, field.name
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    for (i, a) in def.fields.iter().enumerate() {
        if let Some(b) = def.fields[i + 1..].iter().find(|b| b.name == a.name) {
            return Err(GqlError::at(
                b.pos,
                format!("Field {}.{} can only be defined once.", def.name, b.name),
            ));
        }
    }
    if !def.built_in {
        validate_name(def.pos, &def.name)?;
    }
    validate_directives(schema, &def.directives, &def.kind, None)
}

fn validate_type_ref(schema: &Schema, ty: &Type) -> Result<(), GqlError> {
    if schema.ty(ty.name()).is_none() {
        return Err(GqlError::at(
            ty.pos,
            format!("Undefined type {}.", ty.name()),
        ));
    }
    Ok(())
}

fn validate_args(
    schema: &Schema,
    args: &[ArgumentDefinition],
    current: Option<&DirectiveDefinition>,
) -> Result<(), GqlError> {
    for arg in args {
        validate_name(arg.pos, &arg.name)?;
        validate_type_ref(schema, &arg.ty)?;
        if let Some(def) = schema.ty(arg.ty.name())
            && !def.is_input_type()
        {
            return Err(GqlError::at(
                arg.pos,
                format!(
                    "cannot use {} as argument {} because {} is not a valid input type",
                    arg.ty, arg.name, def.kind
                ),
            ));
        }
        validate_directives(schema, &arg.directives, "ARGUMENT_DEFINITION", current)?;
    }
    Ok(())
}

fn validate_directives(
    schema: &Schema,
    dirs: &[Directive],
    location: &str,
    current: Option<&DirectiveDefinition>,
) -> Result<(), GqlError> {
    for dir in dirs {
        validate_name(dir.pos, &dir.name)?;
        if let Some(c) = current
            && dir.name == c.name
        {
            return Err(GqlError::at(
                dir.pos,
                format!("Directive {} cannot refer to itself.", c.name),
            ));
        }
        let Some(def) = schema.directives.get(&dir.name) else {
            return Err(GqlError::at(
                dir.pos,
                format!("Undefined directive {}.", dir.name),
            ));
        };
        if !def.locations.iter().any(|l| l == location) {
            return Err(GqlError::at(
                dir.pos,
                format!("Directive {} is not applicable on {location}.", dir.name),
            ));
        }
        for arg in &dir.arguments {
            if def.argument(&arg.name).is_none() {
                return Err(GqlError::at(
                    arg.pos,
                    format!(
                        "Undefined argument {} for directive {}.",
                        arg.name, dir.name
                    ),
                ));
            }
        }
        for sarg in &def.arguments {
            if sarg.ty.non_null && sarg.default_value.is_none() {
                let given = dir.arguments.iter().find(|a| a.name == sarg.name);
                if given.is_none_or(|a| a.value.kind == ValueKind::Null) {
                    return Err(GqlError::at(
                        dir.pos,
                        format!(
                            "Argument {} for directive {} cannot be null.",
                            sarg.name, dir.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_implements(schema: &Schema, def: &Definition, intf_name: &str) -> Result<(), GqlError> {
    let Some(intf) = schema.ty(intf_name) else {
        return Err(GqlError::at(
            def.pos,
            format!("Undefined type {}.", go_quote(intf_name)),
        ));
    };
    if intf.kind != INTERFACE {
        return Err(GqlError::at(
            def.pos,
            format!(
                "{} is a non interface type {}.",
                go_quote(intf_name),
                intf.kind
            ),
        ));
    }
    for required in &intf.fields {
        let Some(found) = def.field(&required.name) else {
            return Err(GqlError::at(
                def.pos,
                format!(
                    "For {} to implement {} it must have a field called {}.",
                    def.name, intf.name, required.name
                ),
            ));
        };
        if !is_covariant(schema, &required.ty, &found.ty) {
            return Err(GqlError::at(
                found.pos,
                format!(
                    "For {} to implement {} the field {} must have type {}.",
                    def.name, intf.name, required.name, required.ty
                ),
            ));
        }
        for rarg in &required.arguments {
            let Some(farg) = found.argument(&rarg.name) else {
                return Err(GqlError::at(
                    found.pos,
                    format!(
                        "For {} to implement {} the field {} must have the same arguments but it is missing {}.",
                        def.name, intf.name, required.name, rarg.name
                    ),
                ));
            };
            if !rarg.ty.is_compatible(&farg.ty) {
                return Err(GqlError::at(
                    farg.pos,
                    format!(
                        "For {} to implement {} the field {} must have the same arguments but {} has the wrong type.",
                        def.name, intf.name, required.name, rarg.name
                    ),
                ));
            }
        }
        for farg in &found.arguments {
            if required.argument(&farg.name).is_none()
                && farg.ty.non_null
                && farg.default_value.is_none()
            {
                return Err(GqlError::at(
                    farg.pos,
                    format!(
                        "For {} to implement {} any additional arguments on {} must be optional or have a default value but {} is required.",
                        def.name, intf.name, found.name, farg.name
                    ),
                ));
            }
        }
    }
    for transitive in &intf.interfaces {
        if !def.interfaces.contains(transitive) {
            if *transitive == def.name {
                return Err(GqlError::at(
                    def.pos,
                    format!(
                        "Type {} cannot implement {intf_name} because it would create a circular reference.",
                        def.name
                    ),
                ));
            }
            return Err(GqlError::at(
                def.pos,
                format!(
                    "Type {} must implement {transitive} because it is implemented by {intf_name}.",
                    def.name
                ),
            ));
        }
    }
    Ok(())
}

fn is_covariant(schema: &Schema, required: &Type, actual: &Type) -> bool {
    if required.non_null && !actual.non_null {
        return false;
    }
    if !required.named_type.is_empty() {
        if required.named_type == actual.named_type {
            return true;
        }
        return schema
            .possible_types
            .get(&required.named_type)
            .is_some_and(|p| p.contains(&actual.named_type));
    }
    match (&required.elem, &actual.elem) {
        (Some(r), Some(a)) => is_covariant(schema, r, a),
        // gqlparser compares a missing element as an empty named type.
        (Some(_), None) => false,
        (None, _) => false,
    }
}

fn validate_name(pos: At, name: &str) -> Result<(), GqlError> {
    if name.starts_with("__") {
        return Err(GqlError::at(
            pos,
            format!(
                "Name \"{name}\" must not begin with \"__\", which is reserved by GraphQL introspection."
            ),
        ));
    }
    Ok(())
}

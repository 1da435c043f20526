//! The GraphQL syntax tree, shaped as OPA returns it: OPA hands policies the structs of the Go
//! library it wraps (gqlparser), serialised field by field. `to_value` writes that shape;
//! `from_value` reads it back, as OPA does when a policy passes an AST instead of text.

/// Where a node starts: a 1-based line and column (in characters). `prelude` marks the
/// built-in definitions, whose errors OPA attributes to `prelude.graphql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    /// gqlparser's column arithmetic: a block string spanning lines gets a negative one.
    pub column: i64,
    pub prelude: bool,
}

/// A node's position: `None` for nodes read from an AST object (OPA drops positions).
pub type At = Option<Pos>;

#[derive(Debug, Clone, Default)]
pub struct QueryDocument {
    pub operations: Vec<OperationDefinition>,
    pub fragments: Vec<FragmentDefinition>,
}

#[derive(Debug, Clone, Default)]
pub struct OperationDefinition {
    /// `query`, `mutation`, `subscription` (or anything an AST object says).
    pub operation: String,
    pub name: String,
    pub variable_definitions: Vec<VariableDefinition>,
    pub directives: Vec<Directive>,
    pub selection_set: Vec<Selection>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct VariableDefinition {
    pub variable: String,
    pub ty: Type,
    pub default_value: Option<Value>,
    pub directives: Vec<Directive>,
    pub pos: At,
}

#[derive(Debug, Clone)]
pub enum Selection {
    Field(Field),
    FragmentSpread(FragmentSpread),
    InlineFragment(InlineFragment),
}

#[derive(Debug, Clone, Default)]
pub struct Field {
    pub alias: String,
    pub name: String,
    pub arguments: Vec<Argument>,
    pub directives: Vec<Directive>,
    pub selection_set: Vec<Selection>,
    pub pos: At,
}

impl Field {
    /// The key the field's result has in a response.
    pub fn response_name(&self) -> &str {
        if self.alias.is_empty() {
            &self.name
        } else {
            &self.alias
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Argument {
    pub name: String,
    pub value: Value,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct FragmentSpread {
    pub name: String,
    pub directives: Vec<Directive>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct InlineFragment {
    pub type_condition: String,
    pub directives: Vec<Directive>,
    pub selection_set: Vec<Selection>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct FragmentDefinition {
    pub name: String,
    pub variable_definition: Vec<VariableDefinition>,
    pub type_condition: String,
    pub directives: Vec<Directive>,
    pub selection_set: Vec<Selection>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct Directive {
    pub name: String,
    pub arguments: Vec<Argument>,
    pub pos: At,
}

/// gqlparser's value kinds, by their numbers (OPA's ASTs carry the numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    #[default]
    Variable = 0,
    Int = 1,
    Float = 2,
    String = 3,
    Block = 4,
    Boolean = 5,
    Null = 6,
    Enum = 7,
    List = 8,
    Object = 9,
}

impl ValueKind {
    pub fn from_number(n: i64) -> Option<ValueKind> {
        use ValueKind::*;
        [
            Variable, Int, Float, String, Block, Boolean, Null, Enum, List, Object,
        ]
        .get(usize::try_from(n).ok()?)
        .copied()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Value {
    pub raw: String,
    pub children: Vec<ChildValue>,
    pub kind: ValueKind,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct ChildValue {
    pub name: String,
    pub value: Value,
    pub pos: At,
}

impl Value {
    /// The child value named `name` (an object value's field).
    pub fn child(&self, name: &str) -> Option<&Value> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.value)
    }
}

impl std::fmt::Display for Value {
    /// gqlparser's `Value.String`: how validation messages print a value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ValueKind::Variable => write!(f, "${}", self.raw),
            ValueKind::String | ValueKind::Block => f.write_str(&go_quote(&self.raw)),
            ValueKind::List => {
                f.write_str("[")?;
                for (i, c) in self.children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}", c.value)?;
                }
                f.write_str("]")
            }
            ValueKind::Object => {
                f.write_str("{")?;
                for (i, c) in self.children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{}", c.name, c.value)?;
                }
                f.write_str("}")
            }
            _ => f.write_str(&self.raw),
        }
    }
}

pub use crate::builtins::go_quote;

/// A type reference: a named type, or a list of one, either maybe non-null.
#[derive(Debug, Clone, Default)]
pub struct Type {
    pub named_type: String,
    pub elem: Option<Box<Type>>,
    pub non_null: bool,
    pub pos: At,
}

impl Type {
    pub fn named(name: &str, non_null: bool) -> Type {
        Type {
            named_type: name.to_string(),
            elem: None,
            non_null,
            pos: None,
        }
    }

    /// The innermost named type.
    pub fn name(&self) -> &str {
        match &self.elem {
            Some(e) if self.named_type.is_empty() => e.name(),
            _ => &self.named_type,
        }
    }

    /// gqlparser's `Type.IsCompatible`.
    pub fn is_compatible(&self, other: &Type) -> bool {
        if self.named_type != other.named_type {
            return false;
        }
        match (&self.elem, &other.elem) {
            (Some(_), None) => return false,
            (Some(a), Some(b)) if !a.is_compatible(b) => return false,
            _ => {}
        }
        if other.non_null {
            return self.non_null;
        }
        true
    }
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bang = if self.non_null { "!" } else { "" };
        match &self.elem {
            Some(e) if self.named_type.is_empty() => write!(f, "[{e}]{bang}"),
            _ => write!(f, "{}{bang}", self.named_type),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SchemaDocument {
    pub schema: Vec<SchemaDefinition>,
    pub schema_extension: Vec<SchemaDefinition>,
    pub directives: Vec<DirectiveDefinition>,
    pub definitions: Vec<Definition>,
    pub extensions: Vec<Definition>,
}

#[derive(Debug, Clone, Default)]
pub struct SchemaDefinition {
    pub description: String,
    pub directives: Vec<Directive>,
    pub operation_types: Vec<OperationTypeDefinition>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct OperationTypeDefinition {
    pub operation: String,
    pub ty: String,
    pub pos: At,
}

/// A type definition; `kind` is `SCALAR`, `OBJECT`, `INTERFACE`, `UNION`, `ENUM` or
/// `INPUT_OBJECT`.
#[derive(Debug, Clone, Default)]
pub struct Definition {
    pub kind: String,
    pub description: String,
    pub name: String,
    pub directives: Vec<Directive>,
    pub interfaces: Vec<String>,
    pub fields: Vec<FieldDefinition>,
    pub types: Vec<String>,
    pub enum_values: Vec<EnumValueDefinition>,
    pub built_in: bool,
    pub pos: At,
}

pub const SCALAR: &str = "SCALAR";
pub const OBJECT: &str = "OBJECT";
pub const INTERFACE: &str = "INTERFACE";
pub const UNION: &str = "UNION";
pub const ENUM: &str = "ENUM";
pub const INPUT_OBJECT: &str = "INPUT_OBJECT";

impl Definition {
    pub fn is_leaf_type(&self) -> bool {
        self.kind == ENUM || self.kind == SCALAR
    }
    pub fn is_abstract_type(&self) -> bool {
        self.kind == INTERFACE || self.kind == UNION
    }
    pub fn is_composite_type(&self) -> bool {
        self.kind == OBJECT || self.kind == INTERFACE || self.kind == UNION
    }
    pub fn is_input_type(&self) -> bool {
        self.kind == SCALAR || self.kind == ENUM || self.kind == INPUT_OBJECT
    }
    pub fn field(&self, name: &str) -> Option<&FieldDefinition> {
        self.fields.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct FieldDefinition {
    pub description: String,
    pub name: String,
    pub arguments: Vec<ArgumentDefinition>,
    pub default_value: Option<Value>,
    pub ty: Type,
    pub directives: Vec<Directive>,
    pub pos: At,
}

impl FieldDefinition {
    pub fn argument(&self, name: &str) -> Option<&ArgumentDefinition> {
        self.arguments.iter().find(|a| a.name == name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ArgumentDefinition {
    pub description: String,
    pub name: String,
    pub default_value: Option<Value>,
    pub ty: Type,
    pub directives: Vec<Directive>,
    pub pos: At,
}

#[derive(Debug, Clone, Default)]
pub struct EnumValueDefinition {
    pub description: String,
    pub name: String,
    pub directives: Vec<Directive>,
}

#[derive(Debug, Clone, Default)]
pub struct DirectiveDefinition {
    pub description: String,
    pub name: String,
    pub arguments: Vec<ArgumentDefinition>,
    pub locations: Vec<String>,
    pub is_repeatable: bool,
    pub pos: At,
}

impl DirectiveDefinition {
    pub fn argument(&self, name: &str) -> Option<&ArgumentDefinition> {
        self.arguments.iter().find(|a| a.name == name)
    }
}

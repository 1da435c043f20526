//! gqlparser's recursive-descent parser, rule for rule: the first error wins, and later rules
//! run on without effect, so the error OPA reports (message, line, column) is the same.

use super::GqlError;
use super::ast::*;
use super::lexer::{Kind, Lexer, Token};

struct Parser<'a> {
    lexer: Lexer<'a>,
    err: Option<GqlError>,
    peeked: Option<(Token, Option<GqlError>)>,
    prev: Token,
}

/// Parse an executable document (queries, mutations, subscriptions, fragments).
pub fn parse_query(text: &str) -> Result<QueryDocument, GqlError> {
    let mut p = Parser::new(text, false);
    let doc = p.query_document();
    match p.err {
        Some(e) => Err(e),
        None => Ok(doc),
    }
}

/// Parse a type-system document (a schema). `prelude` marks the built-in definitions.
pub fn parse_schema(text: &str, prelude: bool) -> Result<SchemaDocument, GqlError> {
    let mut p = Parser::new(text, prelude);
    let mut doc = p.schema_document();
    if let Some(e) = p.err {
        return Err(e);
    }
    for d in doc.definitions.iter_mut().chain(doc.extensions.iter_mut()) {
        d.built_in = prelude;
    }
    Ok(doc)
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, prelude: bool) -> Parser<'a> {
        Parser {
            lexer: Lexer::new(text, prelude),
            err: None,
            peeked: None,
            prev: Token {
                kind: Kind::Invalid,
                value: String::new(),
                pos: Pos {
                    line: 0,
                    column: 0,
                    prelude,
                },
            },
        }
    }

    fn peek(&mut self) -> Token {
        if self.err.is_some() {
            return self.prev.clone();
        }
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.read());
        }
        self.peeked
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_else(|| self.prev.clone())
    }

    fn peek_kind(&mut self) -> Kind {
        self.peek().kind
    }

    fn peek_pos(&mut self) -> At {
        if self.err.is_some() {
            return None;
        }
        Some(self.peek().pos)
    }

    fn error(&mut self, tok: &Token, message: String) {
        if self.err.is_none() {
            self.err = Some(GqlError::at(Some(tok.pos), message));
        }
    }

    fn next(&mut self) -> Token {
        if self.err.is_some() {
            return self.prev.clone();
        }
        let (tok, err) = match self.peeked.take() {
            Some(p) => p,
            None => self.lexer.read(),
        };
        self.prev = tok;
        self.err = err;
        self.prev.clone()
    }

    fn expect_keyword(&mut self, value: &str) -> Token {
        let tok = self.peek();
        if tok.kind == Kind::Name && tok.value == value {
            return self.next();
        }
        self.error(&tok, format!("Expected {}, found {}", go_quote(value), tok));
        tok
    }

    fn expect(&mut self, kind: Kind) -> Token {
        let tok = self.peek();
        if tok.kind == kind {
            return self.next();
        }
        self.error(&tok, format!("Expected {kind}, found {}", tok.kind));
        tok
    }

    fn skip(&mut self, kind: Kind) -> bool {
        if self.err.is_some() {
            return false;
        }
        if self.peek_kind() != kind {
            return false;
        }
        self.next();
        true
    }

    fn unexpected_error(&mut self) {
        let tok = self.peek();
        self.unexpected_token(&tok);
    }

    fn unexpected_token(&mut self, tok: &Token) {
        self.error(tok, format!("Unexpected {tok}"));
    }

    /// `start item* end`, possibly empty; nothing when `start` is absent.
    fn many(&mut self, start: Kind, end: Kind, mut item: impl FnMut(&mut Self)) {
        if !self.skip(start) {
            return;
        }
        while self.peek_kind() != end && self.err.is_none() {
            item(self);
        }
        self.next();
    }

    /// `start item+ end`; nothing when `start` is absent.
    fn some(&mut self, start: Kind, end: Kind, mut item: impl FnMut(&mut Self)) {
        if !self.skip(start) {
            return;
        }
        let mut called = false;
        while self.peek_kind() != end && self.err.is_none() {
            called = true;
            item(self);
        }
        if !called {
            let tok = self.peek();
            self.error(
                &tok,
                format!("expected at least one definition, found {}", tok.kind),
            );
            return;
        }
        self.next();
    }

    /// `some`, collecting what `item` parses.
    fn some_of<T>(
        &mut self,
        start: Kind,
        end: Kind,
        mut item: impl FnMut(&mut Self) -> T,
    ) -> Vec<T> {
        let mut out = Vec::new();
        self.some(start, end, |p| {
            let v = item(p);
            out.push(v)
        });
        out
    }

    /// `sep? item (sep item)*`: implemented interfaces, union members, directive locations.
    fn separated<T>(&mut self, sep: Kind, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        self.skip(sep);
        let mut out = vec![item(self)];
        while self.skip(sep) && self.err.is_none() {
            out.push(item(self));
        }
        out
    }

    fn name(&mut self) -> String {
        self.expect(Kind::Name).value
    }

    // ---- executable documents ----

    fn query_document(&mut self) -> QueryDocument {
        let mut doc = QueryDocument::default();
        while self.peek_kind() != Kind::Eof {
            if self.err.is_some() {
                return doc;
            }
            let tok = self.peek();
            match tok.kind {
                Kind::Name => match tok.value.as_str() {
                    "query" | "mutation" | "subscription" => {
                        let op = self.operation_definition();
                        doc.operations.push(op)
                    }
                    "fragment" => {
                        let f = self.fragment_definition();
                        doc.fragments.push(f)
                    }
                    _ => self.unexpected_error(),
                },
                Kind::BraceL => {
                    let op = self.operation_definition();
                    doc.operations.push(op)
                }
                _ => self.unexpected_error(),
            }
        }
        doc
    }

    fn operation_definition(&mut self) -> OperationDefinition {
        if self.peek_kind() == Kind::BraceL {
            let pos = self.peek_pos();
            return OperationDefinition {
                operation: "query".to_string(),
                selection_set: self.required_selection_set(),
                pos,
                ..Default::default()
            };
        }
        let mut od = OperationDefinition {
            pos: self.peek_pos(),
            ..Default::default()
        };
        od.operation = self.operation_type();
        if self.peek_kind() == Kind::Name {
            od.name = self.next().value;
        }
        od.variable_definitions = self.variable_definitions();
        od.directives = self.directives(false);
        od.selection_set = self.required_selection_set();
        od
    }

    fn operation_type(&mut self) -> String {
        let tok = self.next();
        match tok.value.as_str() {
            "query" | "mutation" | "subscription" => tok.value,
            _ => {
                self.unexpected_token(&tok);
                String::new()
            }
        }
    }

    fn variable_definitions(&mut self) -> Vec<VariableDefinition> {
        self.some_of(Kind::ParenL, Kind::ParenR, Self::variable_definition)
    }

    fn variable_definition(&mut self) -> VariableDefinition {
        let mut def = VariableDefinition {
            pos: self.peek_pos(),
            ..Default::default()
        };
        def.variable = self.variable();
        self.expect(Kind::Colon);
        def.ty = self.type_reference();
        if self.skip(Kind::Equals) {
            def.default_value = self.value_literal(true);
        }
        def.directives = self.directives(false);
        def
    }

    fn variable(&mut self) -> String {
        self.expect(Kind::Dollar);
        self.name()
    }

    fn optional_selection_set(&mut self) -> Vec<Selection> {
        self.some_of(Kind::BraceL, Kind::BraceR, Self::selection)
    }

    fn required_selection_set(&mut self) -> Vec<Selection> {
        let tok = self.peek();
        if tok.kind != Kind::BraceL {
            self.error(
                &tok,
                format!("Expected {}, found {}", Kind::BraceL, tok.kind),
            );
            return Vec::new();
        }
        self.optional_selection_set()
    }

    fn selection(&mut self) -> Selection {
        if self.peek_kind() == Kind::Spread {
            return self.fragment();
        }
        Selection::Field(self.field())
    }

    fn field(&mut self) -> Field {
        let mut f = Field {
            pos: self.peek_pos(),
            ..Default::default()
        };
        f.alias = self.name();
        f.name = if self.skip(Kind::Colon) {
            self.name()
        } else {
            f.alias.clone()
        };
        f.arguments = self.arguments(false);
        f.directives = self.directives(false);
        if self.peek_kind() == Kind::BraceL {
            f.selection_set = self.optional_selection_set();
        }
        f
    }

    fn arguments(&mut self, is_const: bool) -> Vec<Argument> {
        self.some_of(Kind::ParenL, Kind::ParenR, |p| p.argument(is_const))
    }

    fn argument(&mut self, is_const: bool) -> Argument {
        let pos = self.peek_pos();
        let name = self.name();
        self.expect(Kind::Colon);
        Argument {
            name,
            value: self.value_literal(is_const).unwrap_or_default(),
            pos,
        }
    }

    fn fragment(&mut self) -> Selection {
        self.expect(Kind::Spread);
        let peek = self.peek();
        if peek.kind == Kind::Name && peek.value != "on" {
            let pos = self.peek_pos();
            let name = self.fragment_name();
            return Selection::FragmentSpread(FragmentSpread {
                name,
                directives: self.directives(false),
                pos,
            });
        }
        let mut def = InlineFragment {
            pos: self.peek_pos(),
            ..Default::default()
        };
        if self.peek().value == "on" {
            self.next();
            def.type_condition = self.name();
        }
        def.directives = self.directives(false);
        def.selection_set = self.required_selection_set();
        Selection::InlineFragment(def)
    }

    fn fragment_definition(&mut self) -> FragmentDefinition {
        let mut def = FragmentDefinition {
            pos: self.peek_pos(),
            ..Default::default()
        };
        self.expect_keyword("fragment");
        def.name = self.fragment_name();
        def.variable_definition = self.variable_definitions();
        self.expect_keyword("on");
        def.type_condition = self.name();
        def.directives = self.directives(false);
        def.selection_set = self.required_selection_set();
        def
    }

    fn fragment_name(&mut self) -> String {
        if self.peek().value == "on" {
            self.unexpected_error();
            return String::new();
        }
        self.name()
    }

    fn value_literal(&mut self, is_const: bool) -> Option<Value> {
        let tok = self.peek();
        let kind = match tok.kind {
            Kind::BracketL => return Some(self.list(is_const)),
            Kind::BraceL => return Some(self.object(is_const)),
            Kind::Dollar => {
                if is_const {
                    self.unexpected_error();
                    return None;
                }
                let raw = self.variable();
                return Some(Value {
                    raw,
                    kind: ValueKind::Variable,
                    pos: Some(tok.pos),
                    ..Default::default()
                });
            }
            Kind::Int => ValueKind::Int,
            Kind::Float => ValueKind::Float,
            Kind::String => ValueKind::String,
            Kind::BlockString => ValueKind::Block,
            Kind::Name => match tok.value.as_str() {
                "true" | "false" => ValueKind::Boolean,
                "null" => ValueKind::Null,
                _ => ValueKind::Enum,
            },
            _ => {
                self.unexpected_error();
                return None;
            }
        };
        self.next();
        Some(Value {
            raw: tok.value,
            kind,
            pos: Some(tok.pos),
            ..Default::default()
        })
    }

    fn list(&mut self, is_const: bool) -> Value {
        let pos = self.peek_pos();
        let mut children = Vec::new();
        self.many(Kind::BracketL, Kind::BracketR, |p| {
            let v = p.value_literal(is_const).unwrap_or_default();
            children.push(ChildValue {
                value: v,
                ..Default::default()
            })
        });
        Value {
            children,
            kind: ValueKind::List,
            pos,
            ..Default::default()
        }
    }

    fn object(&mut self, is_const: bool) -> Value {
        let pos = self.peek_pos();
        let mut children = Vec::new();
        self.many(Kind::BraceL, Kind::BraceR, |p| {
            let pos = p.peek_pos();
            let name = p.name();
            p.expect(Kind::Colon);
            let value = p.value_literal(is_const).unwrap_or_default();
            children.push(ChildValue { name, value, pos })
        });
        Value {
            children,
            kind: ValueKind::Object,
            pos,
            ..Default::default()
        }
    }

    fn directives(&mut self, is_const: bool) -> Vec<Directive> {
        let mut dirs = Vec::new();
        while self.peek_kind() == Kind::At {
            if self.err.is_some() {
                break;
            }
            self.expect(Kind::At);
            let pos = self.peek_pos();
            let name = self.name();
            dirs.push(Directive {
                name,
                arguments: self.arguments(is_const),
                pos,
            });
        }
        dirs
    }

    fn type_reference(&mut self) -> Type {
        let mut ty = Type::default();
        if self.skip(Kind::BracketL) {
            ty.pos = self.peek_pos();
            ty.elem = Some(Box::new(self.type_reference()));
            self.expect(Kind::BracketR);
        } else {
            ty.pos = self.peek_pos();
            ty.named_type = self.name();
        }
        if self.skip(Kind::Bang) {
            ty.non_null = true;
        }
        ty
    }

    // ---- type-system documents ----

    fn schema_document(&mut self) -> SchemaDocument {
        let mut doc = SchemaDocument::default();
        while self.peek_kind() != Kind::Eof {
            if self.err.is_some() {
                return doc;
            }
            let mut description = String::new();
            if matches!(self.peek_kind(), Kind::BlockString | Kind::String) {
                description = self.next().value;
            }
            let tok = self.peek();
            if tok.kind != Kind::Name {
                self.unexpected_error();
                break;
            }
            match tok.value.as_str() {
                "scalar" | "type" | "interface" | "union" | "enum" | "input" => {
                    let d = self.type_system_definition(description);
                    doc.definitions.push(d)
                }
                "schema" => {
                    let d = self.schema_definition(description);
                    doc.schema.push(d)
                }
                "directive" => {
                    let d = self.directive_definition(description);
                    doc.directives.push(d)
                }
                "extend" => {
                    if !description.is_empty() {
                        let prev = self.prev.clone();
                        self.unexpected_token(&prev);
                    }
                    self.type_system_extension(&mut doc);
                }
                _ => {
                    self.unexpected_error();
                    return doc;
                }
            }
        }
        doc
    }

    fn description(&mut self) -> String {
        if matches!(self.peek_kind(), Kind::BlockString | Kind::String) {
            return self.next().value;
        }
        String::new()
    }

    fn type_system_definition(&mut self, description: String) -> Definition {
        let tok = self.peek();
        let (kind, fields, input, interfaces, members, values) = match tok.value.as_str() {
            "scalar" => (SCALAR, false, false, false, false, false),
            "type" => (OBJECT, true, false, true, false, false),
            "interface" => (INTERFACE, true, false, true, false, false),
            "union" => (UNION, false, false, false, true, false),
            "enum" => (ENUM, false, false, false, false, true),
            _ => (INPUT_OBJECT, true, true, false, false, false),
        };
        self.expect_keyword(&tok.value);
        let mut def = Definition {
            pos: self.peek_pos(),
            kind: kind.to_string(),
            description,
            ..Default::default()
        };
        def.name = self.name();
        if interfaces {
            def.interfaces = self.implements_interfaces();
        }
        def.directives = self.directives(true);
        if members {
            def.types = self.union_member_types();
        }
        if values {
            def.enum_values = self.enum_values_definition();
        }
        if fields {
            def.fields = if input {
                self.input_fields_definition()
            } else {
                self.fields_definition()
            };
        }
        def
    }

    fn schema_definition(&mut self, description: String) -> SchemaDefinition {
        self.expect_keyword("schema");
        let mut def = SchemaDefinition {
            pos: self.peek_pos(),
            description,
            ..Default::default()
        };
        def.directives = self.directives(true);
        def.operation_types = self.operation_types();
        def
    }

    fn operation_types(&mut self) -> Vec<OperationTypeDefinition> {
        self.some_of(Kind::BraceL, Kind::BraceR, Self::operation_type_definition)
    }

    fn operation_type_definition(&mut self) -> OperationTypeDefinition {
        let pos = self.peek_pos();
        let operation = self.operation_type();
        self.expect(Kind::Colon);
        OperationTypeDefinition {
            operation,
            ty: self.name(),
            pos,
        }
    }

    fn implements_interfaces(&mut self) -> Vec<String> {
        if self.peek().value != "implements" {
            return Vec::new();
        }
        self.next();
        self.separated(Kind::Amp, Self::name)
    }

    fn fields_definition(&mut self) -> Vec<FieldDefinition> {
        self.some_of(Kind::BraceL, Kind::BraceR, Self::field_definition)
    }

    fn field_definition(&mut self) -> FieldDefinition {
        let pos = self.peek_pos();
        let description = self.description();
        let name = self.name();
        let arguments = self.argument_defs();
        self.expect(Kind::Colon);
        let ty = self.type_reference();
        FieldDefinition {
            description,
            name,
            arguments,
            default_value: None,
            ty,
            directives: self.directives(true),
            pos,
        }
    }

    fn argument_defs(&mut self) -> Vec<ArgumentDefinition> {
        self.some_of(Kind::ParenL, Kind::ParenR, Self::argument_def)
    }

    fn argument_def(&mut self) -> ArgumentDefinition {
        let pos = self.peek_pos();
        let description = self.description();
        let name = self.name();
        self.expect(Kind::Colon);
        let ty = self.type_reference();
        let default_value = if self.skip(Kind::Equals) {
            self.value_literal(true)
        } else {
            None
        };
        ArgumentDefinition {
            description,
            name,
            default_value,
            ty,
            directives: self.directives(true),
            pos,
        }
    }

    fn input_value_def(&mut self) -> FieldDefinition {
        let a = self.argument_def();
        FieldDefinition {
            description: a.description,
            name: a.name,
            arguments: Vec::new(),
            default_value: a.default_value,
            ty: a.ty,
            directives: a.directives,
            pos: a.pos,
        }
    }

    fn union_member_types(&mut self) -> Vec<String> {
        if !self.skip(Kind::Equals) {
            return Vec::new();
        }
        self.separated(Kind::Pipe, Self::name)
    }

    fn enum_values_definition(&mut self) -> Vec<EnumValueDefinition> {
        self.some_of(Kind::BraceL, Kind::BraceR, |p| EnumValueDefinition {
            description: p.description(),
            name: p.name(),
            directives: p.directives(true),
        })
    }

    fn input_fields_definition(&mut self) -> Vec<FieldDefinition> {
        self.some_of(Kind::BraceL, Kind::BraceR, Self::input_value_def)
    }

    fn type_system_extension(&mut self, doc: &mut SchemaDocument) {
        self.expect_keyword("extend");
        let tok = self.peek();
        match tok.value.as_str() {
            "schema" => {
                self.expect_keyword("schema");
                let mut def = SchemaDefinition {
                    pos: self.peek_pos(),
                    ..Default::default()
                };
                def.directives = self.directives(true);
                def.operation_types = self.operation_types();
                if def.directives.is_empty() && def.operation_types.is_empty() {
                    self.unexpected_error();
                }
                doc.schema_extension.push(def);
            }
            "scalar" | "type" | "interface" | "union" | "enum" | "input" => {
                let kw = tok.value.clone();
                self.expect_keyword(&kw);
                let kind = match kw.as_str() {
                    "scalar" => SCALAR,
                    "type" => OBJECT,
                    "interface" => INTERFACE,
                    "union" => UNION,
                    "enum" => ENUM,
                    _ => INPUT_OBJECT,
                };
                let mut def = Definition {
                    pos: self.peek_pos(),
                    kind: kind.to_string(),
                    ..Default::default()
                };
                def.name = self.name();
                if kw == "type" {
                    def.interfaces = self.implements_interfaces();
                }
                // gqlparser reads an input extension's directives as non-constant.
                def.directives = self.directives(kw != "input");
                let empty = match kw.as_str() {
                    "scalar" => def.directives.is_empty(),
                    "type" | "interface" => {
                        def.fields = self.fields_definition();
                        def.interfaces.is_empty()
                            && def.directives.is_empty()
                            && def.fields.is_empty()
                    }
                    "union" => {
                        def.types = self.union_member_types();
                        def.directives.is_empty() && def.types.is_empty()
                    }
                    "enum" => {
                        def.enum_values = self.enum_values_definition();
                        def.directives.is_empty() && def.enum_values.is_empty()
                    }
                    _ => {
                        def.fields = self.input_fields_definition();
                        def.directives.is_empty() && def.fields.is_empty()
                    }
                };
                if empty {
                    self.unexpected_error();
                }
                doc.extensions.push(def);
            }
            _ => self.unexpected_error(),
        }
    }

    fn directive_definition(&mut self, description: String) -> DirectiveDefinition {
        self.expect_keyword("directive");
        self.expect(Kind::At);
        let mut def = DirectiveDefinition {
            pos: self.peek_pos(),
            description,
            ..Default::default()
        };
        def.name = self.name();
        def.arguments = self.argument_defs();
        let peek = self.peek();
        if peek.kind == Kind::Name && peek.value == "repeatable" {
            def.is_repeatable = true;
            self.skip(Kind::Name);
        }
        self.expect_keyword("on");
        def.locations = self.separated(Kind::Pipe, Self::directive_location);
        def
    }

    fn directive_location(&mut self) -> String {
        let tok = self.expect(Kind::Name);
        if LOCATIONS.contains(&tok.value.as_str()) {
            return tok.value;
        }
        self.unexpected_token(&tok);
        String::new()
    }
}

/// Every directive location GraphQL names.
pub const LOCATIONS: [&str; 19] = [
    "QUERY",
    "MUTATION",
    "SUBSCRIPTION",
    "FIELD",
    "FRAGMENT_DEFINITION",
    "FRAGMENT_SPREAD",
    "INLINE_FRAGMENT",
    "VARIABLE_DEFINITION",
    "SCHEMA",
    "SCALAR",
    "OBJECT",
    "FIELD_DEFINITION",
    "ARGUMENT_DEFINITION",
    "INTERFACE",
    "UNION",
    "ENUM",
    "ENUM_VALUE",
    "INPUT_OBJECT",
    "INPUT_FIELD_DEFINITION",
];

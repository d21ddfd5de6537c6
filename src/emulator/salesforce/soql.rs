//! SOQL subset: parsing against the org's schema and evaluation over records.
//!
//! Clients (tap-salesforce, simple-salesforce, our own connector) depend on the org refusing
//! what the real one refuses, with the same bodies, so names and literal types are checked at
//! parse time and errors carry Salesforce's caret diagram. Evaluation follows SOQL rather than
//! SQL: text equality ignores case, `!=` and `NOT IN` keep empty fields, and 15-character ids
//! match their 18-character form.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate};

use super::schema::{self, day_of, FieldDef, FieldType, ObjectDef, SfRecord, SfValue};
use crate::record::Millis;
use crate::record::DAY_MS;

/// Relative literals are whole UTC days; datetime fields compare them in milliseconds.
/// Salesforce refuses larger offsets; clients must page with `nextRecordsUrl` instead.
const MAX_OFFSET: usize = 2000;

/// A refused query, as the REST API reports it (`errorCode`, `message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SoqlError {
    /// `MALFORMED_QUERY`, `INVALID_FIELD`, `INVALID_TYPE` or `NUMBER_OUTSIDE_VALID_RANGE`.
    pub code: &'static str,
    /// The message, with the caret diagram when Salesforce sends one.
    pub message: String,
}

/// Errors point into the query text the client sent, so they are built from it.
impl SoqlError {
    /// An error pointing at byte `offset` of the query, as Salesforce draws it.
    fn at(src: &str, offset: usize, code: &'static str, detail: &str) -> SoqlError {
        SoqlError {
            code,
            message: format!("{}{detail}", caret_diagram(src, offset)),
        }
    }
}

/// For logs: the code first, as Salesforce's clients print it.
impl fmt::Display for SoqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Lets callers use `?` into boxed errors.
impl std::error::Error for SoqlError {}

/// `"\n<line>\n<spaces>^\nERROR at Row:R:Column:C\n"`: the prefix of every positioned error.
fn caret_diagram(src: &str, offset: usize) -> String {
    let before = &src[..offset];
    let row = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let line_end = src[offset..]
        .find('\n')
        .map_or(src.len(), |index| offset + index);
    let line = src[line_start..line_end].trim_end_matches('\r');
    let column = src[line_start..offset].chars().count() + 1;
    format!(
        "\n{line}\n{}^\nERROR at Row:{row}:Column:{column}\n",
        " ".repeat(column - 1)
    )
}

/// A parsed, name-checked query.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// The object after `FROM`.
    pub object: &'static ObjectDef,
    /// What each row returns.
    pub select: Selection,
    /// The `WHERE` clause.
    pub filter: Option<Expr>,
    /// `ORDER BY` keys, most significant first.
    pub order: Vec<OrderKey>,
    /// `LIMIT`.
    pub limit: Option<usize>,
    /// `OFFSET` (at most 2000).
    pub offset: Option<usize>,
}

/// The select list.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// `SELECT COUNT()`: only `totalSize` is answered.
    Count,
    /// Fields in the order written, which is the order of keys in each JSON record.
    Fields(Vec<FieldPath>),
}

/// A resolved field reference such as `Owner.Name`.
#[derive(Debug, Clone)]
pub(crate) struct FieldPath {
    /// Indices of the reference fields walked from the queried object (empty for own fields).
    pub steps: Vec<usize>,
    /// Relationship names of those steps, as declared in the schema (`Owner`, `Account`), for nesting in JSON.
    pub relationships: Vec<&'static str>,
    /// The final field (declared spelling).
    pub field: &'static FieldDef,
    /// Index of `field` in the object it belongs to.
    pub index: usize,
}

/// Fetches the record a reference field points at. For a polymorphic reference it returns a record of the `NAME` pseudo-object.
pub(crate) trait Resolver {
    /// The record `id` names through `reference`, if it exists.
    fn parent(&self, reference: &FieldDef, id: &str) -> Option<SfRecord>;
}

/// One `ORDER BY` key.
#[derive(Debug, Clone)]
pub(crate) struct OrderKey {
    /// The sorted field.
    pub path: FieldPath,
    /// `DESC`.
    pub descending: bool,
    /// Where empty values go; SOQL defaults to first for ASC and last for DESC.
    pub nulls_last: bool,
}

/// A `WHERE` condition tree.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// All must hold.
    And(Vec<Expr>),
    /// One must hold.
    Or(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
    /// A test of one field.
    Condition(Condition),
}

/// A test of one field against literals, already type-checked against the field.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    /// The tested field.
    pub path: FieldPath,
    /// What is tested.
    pub test: Test,
}

/// The operator side of a [`Condition`].
#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// `= != < <= > >=` with one value.
    Compare(Operator, Literal),
    /// `IN (...)` or, negated, `NOT IN (...)`.
    In {
        /// The listed values.
        values: Vec<Literal>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `LIKE 'pattern'`, case-insensitive.
    Like(Vec<PatternPart>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal of a `WHERE` clause.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    /// `NULL`.
    Null,
    /// `TRUE` / `FALSE`.
    Bool(bool),
    /// An unquoted number.
    Number(f64),
    /// A quoted string (escapes resolved).
    Text(String),
    /// `2024-01-31`, days since 1970-01-01.
    Date(i32),
    /// `2024-01-31T09:15:00Z`, normalised to UTC epoch milliseconds.
    DateTime(Millis),
    /// A relative date literal (`THIS_MONTH`): days `[start, end)` since 1970-01-01, UTC.
    Range {
        /// First day inside.
        start: i32,
        /// First day after.
        end: i32,
    },
}

/// One element of a `LIKE` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternPart {
    /// A character matched case-insensitively (already lower-cased).
    Char(char),
    /// `_`
    AnyOne,
    /// `%`
    AnyRun,
}

/// Parses `soql` against the schema; relative date literals are evaluated at `now`.
pub(crate) fn parse(soql: &str, now: Millis) -> Result<Query, SoqlError> {
    let tokens = lex(soql)?;
    Parser {
        src: soql,
        tokens,
        pos: 0,
        today: day_of(now),
    }
    .query()
}

/// Evaluation over the emulator's records.
impl Query {
    /// The latest `CreatedDate` a matching row can have, when the `WHERE` clause requires one
    /// (`CreatedDate < t` or `<= t` with a datetime, alone or in its top-level `AND`): history
    /// scans skip the parents created after it.
    pub fn created_by(&self) -> Option<Millis> {
        self.created_bounds(&[Operator::Lt, Operator::Le]).min()
    }

    /// The earliest `CreatedDate` a matching row can have, when the `WHERE` clause requires one
    /// (`CreatedDate > t` or `>= t`, as for [`Query::created_by`]).
    pub fn created_from(&self) -> Option<Millis> {
        self.created_bounds(&[Operator::Gt, Operator::Ge]).max()
    }

    /// The datetimes `CreatedDate` is compared to with one of `operators`, alone or in the
    /// top-level `AND`.
    fn created_bounds<'q>(
        &'q self,
        operators: &'q [Operator],
    ) -> impl Iterator<Item = Millis> + 'q {
        let terms = match &self.filter {
            Some(Expr::And(all)) => all.as_slice(),
            Some(single) => std::slice::from_ref(single),
            None => &[],
        };
        terms.iter().filter_map(move |term| match term {
            Expr::Condition(Condition {
                path,
                test: Test::Compare(operator, Literal::DateTime(at)),
            }) if operators.contains(operator)
                && path.steps.is_empty()
                && path.field.name == "CreatedDate" =>
            {
                Some(*at)
            }
            _ => None,
        })
    }

    /// Whether `record` passes the `WHERE` clause.
    pub fn matches(&self, record: &SfRecord, resolver: &dyn Resolver) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.matches(record, resolver))
    }

    /// The values a record is ordered by, read once so sorting does not rebuild parents.
    pub fn sort_keys(&self, record: &SfRecord, resolver: &dyn Resolver) -> Vec<SfValue> {
        self.order
            .iter()
            .map(|key| key.path.value(record, resolver))
            .collect()
    }

    /// Orders two records by their [`Query::sort_keys`] (equal when there are no keys).
    pub fn compare_keys(&self, a: &[SfValue], b: &[SfValue]) -> Ordering {
        self.order
            .iter()
            .zip(a.iter().zip(b))
            .map(|(key, (left, right))| key.compare_values(left, right))
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// Reading values through relationship paths.
impl FieldPath {
    /// The field's value on `record`, following references; `Null` where a link is empty or dangling.
    pub fn value(&self, record: &SfRecord, resolver: &dyn Resolver) -> SfValue {
        let mut parent: Option<SfRecord> = None;
        for &step in &self.steps {
            let current = parent.as_ref().unwrap_or(record);
            let Some(SfValue::Text(id)) = current.values.get(step) else {
                return SfValue::Null;
            };
            match resolver.parent(&current.object.fields[step], id) {
                Some(next) => parent = Some(next),
                None => return SfValue::Null,
            }
        }
        field_value(parent.as_ref().unwrap_or(record), self.field, self.index)
    }
}

/// The value at `index`, or by name when a resolver returned a record of another shape than
/// the schema path expects (a `User` instead of the `Name` pseudo-object, say).
fn field_value(record: &SfRecord, field: &FieldDef, index: usize) -> SfValue {
    let fits = record
        .object
        .fields
        .get(index)
        .is_some_and(|declared| declared.name == field.name);
    match record.values.get(index) {
        Some(value) if fits => value.clone(),
        _ => record.get(field.name).clone(),
    }
}

/// One key's contribution to [`Query::compare`].
impl OrderKey {
    /// Orders two values of this key, with its direction and null placement.
    fn compare_values(&self, left: &SfValue, right: &SfValue) -> Ordering {
        match (left.is_null(), right.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) if self.nulls_last => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, true) if self.nulls_last => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => {
                let ordering = sort_order(left, right, self.path.field.kind);
                if self.descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            }
        }
    }
}

/// How `ORDER BY` ranks two non-empty values: text ignoring case, ids by their exact string.
fn sort_order(a: &SfValue, b: &SfValue, kind: FieldType) -> Ordering {
    match (a, b) {
        (SfValue::Text(a), SfValue::Text(b)) if is_id(kind) => a.cmp(b),
        (SfValue::Text(a), SfValue::Text(b)) => a.to_lowercase().cmp(&b.to_lowercase()),
        (SfValue::Number(a), SfValue::Number(b)) => a.total_cmp(b),
        (SfValue::Bool(a), SfValue::Bool(b)) => a.cmp(b),
        (SfValue::Date(a), SfValue::Date(b)) => a.cmp(b),
        (SfValue::DateTime(a), SfValue::DateTime(b)) => a.cmp(b),
        _ => Ordering::Equal,
    }
}

/// Ids and references compare as ids, not as case-blind text.
fn is_id(kind: FieldType) -> bool {
    matches!(kind, FieldType::Id | FieldType::Reference)
}

/// Condition-tree evaluation.
impl Expr {
    /// Evaluates the condition tree on `record`.
    fn matches(&self, record: &SfRecord, resolver: &dyn Resolver) -> bool {
        match self {
            Expr::And(all) => all.iter().all(|expr| expr.matches(record, resolver)),
            Expr::Or(any) => any.iter().any(|expr| expr.matches(record, resolver)),
            Expr::Not(inner) => !inner.matches(record, resolver),
            Expr::Condition(condition) => condition.matches(record, resolver),
        }
    }
}

/// Evaluation of one field test.
impl Condition {
    /// Reads the field once, then applies the operator.
    fn matches(&self, record: &SfRecord, resolver: &dyn Resolver) -> bool {
        let value = self.path.value(record, resolver);
        let kind = self.path.field.kind;
        match &self.test {
            Test::Compare(operator, literal) => compare_value(&value, kind, *operator, literal),
            Test::In { values, negated } => {
                let found = values
                    .iter()
                    .any(|literal| compare_value(&value, kind, Operator::Eq, literal));
                found != *negated
            }
            Test::Like(pattern) => match &value {
                SfValue::Text(text) => like(pattern, text),
                _ => false,
            },
        }
    }
}

/// One comparison with SOQL's null rules: an empty field equals only `null`, differs from
/// everything else, and is neither less nor greater than anything.
fn compare_value(value: &SfValue, kind: FieldType, operator: Operator, literal: &Literal) -> bool {
    if value.is_null() || *literal == Literal::Null {
        let both = value.is_null() && *literal == Literal::Null;
        return match operator {
            Operator::Eq => both,
            Operator::Ne => !both,
            _ => false,
        };
    }
    if let Literal::Range { start, end } = literal {
        return in_range(value, operator, *start, *end);
    }
    match literal_order(value, kind, literal) {
        Some(ordering) => operator_holds(operator, ordering),
        None => operator == Operator::Ne,
    }
}

/// Where a value stands against a literal of its field's type (`None` for mismatched data).
fn literal_order(value: &SfValue, kind: FieldType, literal: &Literal) -> Option<Ordering> {
    match (value, literal) {
        (SfValue::Text(a), Literal::Text(b)) if is_id(kind) => Some(if ids_equal(a, b) {
            Ordering::Equal
        } else {
            a.as_str().cmp(b.as_str())
        }),
        (SfValue::Text(a), Literal::Text(b)) => Some(a.to_lowercase().cmp(&b.to_lowercase())),
        (SfValue::Number(a), Literal::Number(b)) => a.partial_cmp(b),
        (SfValue::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (SfValue::Date(a), Literal::Date(b)) => Some(a.cmp(b)),
        (SfValue::DateTime(a), Literal::DateTime(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// A 15-character id is the case-sensitive form of an 18-character one; 18-character ids
/// carry a case checksum, so they compare ignoring case.
fn ids_equal(a: &str, b: &str) -> bool {
    if a.len() == 15 || b.len() == 15 {
        a.get(..15).is_some() && a.get(..15) == b.get(..15)
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

/// Maps an ordering onto a comparison operator.
fn operator_holds(operator: Operator, ordering: Ordering) -> bool {
    match operator {
        Operator::Eq => ordering.is_eq(),
        Operator::Ne => ordering.is_ne(),
        Operator::Lt => ordering.is_lt(),
        Operator::Le => ordering.is_le(),
        Operator::Gt => ordering.is_gt(),
        Operator::Ge => ordering.is_ge(),
    }
}

/// A relative literal is a span: `=` inside, `>` after it, `<` before it, `>=` from its start,
/// `<=` up to its end.
fn in_range(value: &SfValue, operator: Operator, start: i32, end: i32) -> bool {
    let (at, start, end) = match value {
        SfValue::Date(day) => (i64::from(*day), i64::from(start), i64::from(end)),
        SfValue::DateTime(ms) => (*ms, i64::from(start) * DAY_MS, i64::from(end) * DAY_MS),
        _ => return operator == Operator::Ne,
    };
    let inside = start <= at && at < end;
    match operator {
        Operator::Eq => inside,
        Operator::Ne => !inside,
        Operator::Gt => at >= end,
        Operator::Ge => at >= start,
        Operator::Lt => at < start,
        Operator::Le => at < end,
    }
}

/// Wildcard match with backtracking to the last `%`, ignoring case.
fn like(pattern: &[PatternPart], text: &str) -> bool {
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(PatternPart::AnyRun) => {
                resume = Some((p, t));
                p += 1;
            }
            Some(PatternPart::AnyOne) => {
                p += 1;
                t += 1;
            }
            Some(PatternPart::Char(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((star, from)) => {
                    p = star + 1;
                    t = from + 1;
                    resume = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..]
        .iter()
        .all(|part| *part == PatternPart::AnyRun)
}

// ---------------------------------------------------------------------------------------
// Lexer

/// What a token is; positions are kept in [`Token`] for error diagrams.
#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    /// A keyword, name or dotted path (`Owner.Name`).
    Word(String),
    /// A quoted string: each character, flagged when it was escaped (for `LIKE`'s `\%`, `\_`).
    Text(Vec<(char, bool)>),
    /// An unquoted number.
    Number,
    /// `2024-01-31`.
    Date,
    /// `2024-01-31T...`.
    DateTime,
    /// Punctuation and operators.
    Symbol(&'static str),
    /// End of the query.
    End,
}

/// A token and its byte span in the query.
#[derive(Debug, Clone)]
struct Token {
    /// What it is.
    kind: TokenKind,
    /// Where it starts (the caret goes here).
    start: usize,
    /// Where it ends.
    end: usize,
}

/// Punctuation, longest first so `<=` is not read as `<` then `=`.
const SYMBOLS: [&str; 11] = ["!=", "<>", "<=", ">=", "=", "<", ">", "(", ")", ",", ":"];

/// Splits the query into tokens, keeping byte positions for the caret diagram.
fn lex(src: &str) -> Result<Vec<Token>, SoqlError> {
    let mut tokens = Vec::new();
    let mut at = 0;
    loop {
        at += src[at..].len() - src[at..].trim_start().len();
        let rest = &src[at..];
        let Some(first) = rest.chars().next() else {
            tokens.push(Token {
                kind: TokenKind::End,
                start: at,
                end: at,
            });
            return Ok(tokens);
        };
        let token = if first.is_ascii_alphabetic() || first == '_' {
            lex_word(src, at)
        } else if first.is_ascii_digit() || (first == '-' && starts_with_digit(&rest[1..])) {
            lex_number_or_date(src, at)
        } else if first == '\'' {
            lex_string(src, at)?
        } else if let Some(symbol) = SYMBOLS.iter().find(|symbol| rest.starts_with(**symbol)) {
            Token {
                kind: TokenKind::Symbol(symbol),
                start: at,
                end: at + symbol.len(),
            }
        } else {
            let detail = format!("unexpected token: '{first}'");
            return Err(SoqlError::at(src, at, MALFORMED, &detail));
        };
        at = token.end;
        tokens.push(token);
    }
}

/// Whether a `-` begins a negative number rather than standing alone.
fn starts_with_digit(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Characters of a name segment; custom names end in `__c`, so `_` is one.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A name, keyword or dotted path; a dot joins only when a name follows it.
fn lex_word(src: &str, start: usize) -> Token {
    let bytes = src.as_bytes();
    let mut end = start;
    while end < src.len() {
        let c = char::from(bytes[end]);
        let joins_path = c == '.'
            && bytes
                .get(end + 1)
                .is_some_and(|next| is_word_char(char::from(*next)));
        if !is_word_char(c) && !joins_path {
            break;
        }
        end += 1;
    }
    Token {
        kind: TokenKind::Word(src[start..end].to_string()),
        start,
        end,
    }
}

/// `-12.5`, `2024-01-31` or `2024-01-31T03:04:05.000+01:00`.
fn lex_number_or_date(src: &str, start: usize) -> Token {
    let bytes = src.as_bytes();
    let digits_from = if bytes[start] == b'-' {
        start + 1
    } else {
        start
    };
    let mut end = digits_from;
    while end < src.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    let date_like = digits_from == start
        && end - start == 4
        && bytes.get(end) == Some(&b'-')
        && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
    if date_like {
        return lex_date(src, start, end);
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        while end < src.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    Token {
        kind: TokenKind::Number,
        start,
        end,
    }
}

/// The rest of a date, and of a datetime when a `T` follows.
fn lex_date(src: &str, start: usize, year_end: usize) -> Token {
    let bytes = src.as_bytes();
    let mut end = year_end;
    while end < src.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'-') {
        end += 1;
    }
    if !matches!(bytes.get(end), Some(b'T' | b't')) {
        return Token {
            kind: TokenKind::Date,
            start,
            end,
        };
    }
    while end < src.len() && is_datetime_char(bytes[end]) {
        end += 1;
    }
    Token {
        kind: TokenKind::DateTime,
        start,
        end,
    }
}

/// Characters a datetime literal can hold after the `T` (time, fraction, zone).
fn is_datetime_char(byte: u8) -> bool {
    byte.is_ascii_digit() || matches!(byte, b':' | b'.' | b'T' | b't' | b'Z' | b'z' | b'+' | b'-')
}

/// A single-quoted string with SOQL's backslash escapes.
fn lex_string(src: &str, start: usize) -> Result<Token, SoqlError> {
    let mut chars = Vec::new();
    let mut iter = src[start + 1..].char_indices();
    while let Some((index, c)) = iter.next() {
        match c {
            '\'' => {
                return Ok(Token {
                    kind: TokenKind::Text(chars),
                    start,
                    end: start + 1 + index + 1,
                })
            }
            '\\' => {
                let escaped = iter.next().map(|(_, next)| next);
                match escaped.and_then(unescape) {
                    Some(pair) => chars.push(pair),
                    None => return Err(illegal_escape(src, start, escaped)),
                }
            }
            _ => chars.push((c, false)),
        }
    }
    Err(SoqlError::at(
        src,
        src.len(),
        MALFORMED,
        "unexpected token: <EOF>",
    ))
}

/// The character an escape stands for; `\%` and `\_` stay flagged as literal for `LIKE`.
fn unescape(c: char) -> Option<(char, bool)> {
    let plain = match c {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        'b' => '\u{8}',
        'f' => '\u{c}',
        '\'' | '"' | '\\' => c,
        '%' | '_' => return Some((c, true)),
        _ => return None,
    };
    Some((plain, false))
}

/// SOQL refuses unknown backslash escapes rather than keeping them.
fn illegal_escape(src: &str, start: usize, escaped: Option<char>) -> SoqlError {
    let sequence = escaped.map_or("\\".to_string(), |c| format!("\\{c}"));
    let detail = format!(
        "Invalid string literal. Illegal character sequence '{sequence}' in string literal."
    );
    SoqlError::at(src, start, MALFORMED, &detail)
}

// ---------------------------------------------------------------------------------------
// Parser

/// Syntax errors and unsupported constructs.
const MALFORMED: &str = "MALFORMED_QUERY";
/// Unknown fields and relationships, wrong literal types, unfilterable fields.
const INVALID_FIELD: &str = "INVALID_FIELD";
/// Unknown or unqueryable objects.
const INVALID_TYPE: &str = "INVALID_TYPE";
/// `OFFSET` above the maximum.
const OUT_OF_RANGE: &str = "NUMBER_OUTSIDE_VALID_RANGE";

/// A path as written, before it is resolved against the `FROM` object.
struct WrittenPath {
    /// `Owner.Name`, in the client's spelling.
    text: String,
    /// Where it starts, for errors about it.
    start: usize,
}

/// Recursive-descent parser over the token list; `today` anchors relative literals.
struct Parser<'a> {
    /// The query text, for error diagrams.
    src: &'a str,
    /// Tokens, ending with `End`.
    tokens: Vec<Token>,
    /// Index of the current token.
    pos: usize,
    /// Day number of `now`.
    today: i32,
}

impl Parser<'_> {
    /// The whole statement, clause by clause in SOQL's fixed order.
    fn query(mut self) -> Result<Query, SoqlError> {
        self.expect_keyword("SELECT")?;
        let written = self.select_list()?;
        self.expect_keyword("FROM")?;
        let object = self.object()?;
        let select = match written {
            None => Selection::Count,
            Some(paths) => Selection::Fields(
                paths
                    .iter()
                    .map(|path| self.resolve(object, path))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let filter = if self.eat_keyword("WHERE") {
            Some(self.expression(object)?)
        } else {
            None
        };
        self.refuse_grouping()?;
        let order = if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            self.order_keys(object)?
        } else {
            Vec::new()
        };
        let limit = self.count_clause("LIMIT")?;
        let offset = self.count_clause("OFFSET")?;
        if offset.is_some_and(|offset| offset > MAX_OFFSET) {
            return Err(SoqlError {
                code: OUT_OF_RANGE,
                message: format!("Maximum SOQL offset allowed is {MAX_OFFSET}"),
            });
        }
        if self.peek().kind != TokenKind::End {
            return Err(self.unexpected());
        }
        Ok(Query {
            object,
            select,
            filter,
            order,
            limit,
            offset,
        })
    }

    // --- tokens

    /// The current token; the trailing `End` repeats forever.
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    /// Takes the current token.
    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.pos += 1;
        }
        token
    }

    /// The token as the client wrote it, for error messages.
    fn text(&self, token: &Token) -> &str {
        &self.src[token.start..token.end]
    }

    /// Keywords are case-insensitive words.
    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().kind, TokenKind::Word(word) if word.eq_ignore_ascii_case(keyword))
    }

    /// Takes the keyword when it is next.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Requires the keyword, else `unexpected token`.
    fn expect_keyword(&mut self, keyword: &str) -> Result<(), SoqlError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Takes the symbol when it is next.
    fn eat_symbol(&mut self, symbol: &'static str) -> bool {
        let found = self.peek().kind == TokenKind::Symbol(symbol);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Requires the symbol, else `unexpected token`.
    fn expect_symbol(&mut self, symbol: &'static str) -> Result<(), SoqlError> {
        if self.eat_symbol(symbol) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// `unexpected token: 'X'` (or `<EOF>`) at the current token.
    fn unexpected(&self) -> SoqlError {
        self.unexpected_at(&self.peek().clone())
    }

    /// `unexpected token` at a given token.
    fn unexpected_at(&self, token: &Token) -> SoqlError {
        let detail = match token.kind {
            TokenKind::End => "unexpected token: <EOF>".to_string(),
            _ => format!("unexpected token: '{}'", self.text(token)),
        };
        SoqlError::at(self.src, token.start, MALFORMED, &detail)
    }

    /// Constructs real SOQL accepts but the emulator does not: named, so test failures are clear.
    fn unsupported(&self, token: &Token, what: &str) -> SoqlError {
        let detail = format!("{what} is not supported by the emulated org");
        SoqlError::at(self.src, token.start, MALFORMED, &detail)
    }

    // --- SELECT and FROM

    /// The written paths, or `None` for `COUNT()`.
    fn select_list(&mut self) -> Result<Option<Vec<WrittenPath>>, SoqlError> {
        let mut paths = Vec::new();
        loop {
            let token = self.advance();
            let TokenKind::Word(word) = &token.kind else {
                return Err(match token.kind {
                    TokenKind::Symbol("(") => self.unsupported(&token, "A relationship subquery"),
                    _ => self.unexpected_at(&token),
                });
            };
            if word.eq_ignore_ascii_case("TYPEOF") {
                return Err(self.unsupported(&token, "TYPEOF"));
            }
            if self.peek().kind == TokenKind::Symbol("(") {
                if paths.is_empty() && self.count_call(word)? {
                    return Ok(None);
                }
                let what = format!("The function {}()", word.to_uppercase());
                return Err(self.unsupported(&token, &what));
            }
            paths.push(WrittenPath {
                text: word.clone(),
                start: token.start,
            });
            if !self.eat_symbol(",") {
                return Ok(Some(paths));
            }
        }
    }

    /// Consumes `COUNT()` when that is what follows; other aggregates are left to the caller.
    fn count_call(&mut self, word: &str) -> Result<bool, SoqlError> {
        let empty_parens =
            self.tokens.get(self.pos + 1).map(|token| &token.kind) == Some(&TokenKind::Symbol(")"));
        if !word.eq_ignore_ascii_case("COUNT") || !empty_parens {
            return Ok(false);
        }
        self.pos += 2;
        if !self.is_keyword("FROM") {
            return Err(self.unexpected());
        }
        Ok(true)
    }

    /// The `FROM` object; unqueryable ones are refused as unknown, as Salesforce does.
    fn object(&mut self) -> Result<&'static ObjectDef, SoqlError> {
        let token = self.advance();
        let TokenKind::Word(name) = &token.kind else {
            return Err(self.unexpected_at(&token));
        };
        match schema::object(name).filter(|object| object.queryable) {
            Some(object) => Ok(object),
            None => {
                let detail = format!(
                    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
                );
                Err(SoqlError::at(self.src, token.start, INVALID_TYPE, &detail))
            }
        }
    }

    // --- paths

    /// Resolves `Owner.Name` against `object`, walking relationships.
    fn resolve(
        &self,
        object: &'static ObjectDef,
        written: &WrittenPath,
    ) -> Result<FieldPath, SoqlError> {
        let mut segments: Vec<&str> = written.text.split('.').collect();
        let names_object = segments.len() > 1
            && segments[0].eq_ignore_ascii_case(object.name)
            && object.relationship_field(segments[0]).is_none();
        if names_object {
            segments.remove(0);
        }
        let (last, walk) = segments.split_last().unwrap_or((&"", &[]));
        let mut current = object;
        let mut steps = Vec::new();
        let mut relationships = Vec::new();
        for name in walk {
            let Some((index, target)) = relationship_target(current, name) else {
                return Err(self.unknown_relationship(written, name));
            };
            let field = &current.fields[index];
            steps.push(index);
            relationships.push(field.relationship.unwrap_or(field.name));
            current = target;
        }
        let Some(index) = current.field_index(last) else {
            let detail = format!(
                "No such column '{last}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                current.name
            );
            return Err(SoqlError::at(
                self.src,
                written.start,
                INVALID_FIELD,
                &detail,
            ));
        };
        Ok(FieldPath {
            steps,
            relationships,
            field: &current.fields[index],
            index,
        })
    }

    /// The refusal of a path segment that is not a relationship of its object.
    fn unknown_relationship(&self, written: &WrittenPath, name: &str) -> SoqlError {
        let detail = format!(
            "Didn't understand relationship '{name}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
        );
        SoqlError::at(self.src, written.start, INVALID_FIELD, &detail)
    }

    /// The next path token, resolved; `verb` names what the clause does for the
    /// "can not be filtered/sorted" refusal of anyType fields.
    fn clause_path(
        &mut self,
        object: &'static ObjectDef,
        verb: &str,
    ) -> Result<FieldPath, SoqlError> {
        let token = self.advance();
        let TokenKind::Word(text) = &token.kind else {
            return Err(self.unexpected_at(&token));
        };
        let written = WrittenPath {
            text: text.clone(),
            start: token.start,
        };
        let path = self.resolve(object, &written)?;
        if !path.field.filterable {
            let detail = format!(
                "field '{}' can not be {verb} in a query call",
                path.field.name
            );
            return Err(SoqlError::at(self.src, token.start, INVALID_FIELD, &detail));
        }
        Ok(path)
    }

    // --- WHERE

    /// Conditions joined by one connector; SOQL needs parentheses to mix AND and OR.
    fn expression(&mut self, object: &'static ObjectDef) -> Result<Expr, SoqlError> {
        let first = self.condition(object)?;
        let connector = if self.is_keyword("AND") {
            "AND"
        } else if self.is_keyword("OR") {
            "OR"
        } else {
            return Ok(first);
        };
        let mut list = vec![first];
        while self.eat_keyword(connector) {
            list.push(self.condition(object)?);
        }
        if self.is_keyword("AND") || self.is_keyword("OR") {
            return Err(self.unexpected());
        }
        Ok(if connector == "AND" {
            Expr::And(list)
        } else {
            Expr::Or(list)
        })
    }

    /// A single test, a negation or a parenthesised group.
    fn condition(&mut self, object: &'static ObjectDef) -> Result<Expr, SoqlError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.condition(object)?)));
        }
        if self.eat_symbol("(") {
            let inner = self.expression(object)?;
            self.expect_symbol(")")?;
            return Ok(inner);
        }
        let path = self.clause_path(object, "filtered")?;
        let test = self.test(&path)?;
        Ok(Expr::Condition(Condition { path, test }))
    }

    /// The operator and value(s) after a field.
    fn test(&mut self, path: &FieldPath) -> Result<Test, SoqlError> {
        if self.eat_keyword("NOT") {
            if !self.eat_keyword("IN") {
                return Err(self.unexpected());
            }
            return self.in_list(path, true);
        }
        if self.eat_keyword("IN") {
            return self.in_list(path, false);
        }
        if self.eat_keyword("LIKE") {
            return self.like_pattern(path);
        }
        let token = self.advance();
        let operator = match token.kind {
            TokenKind::Symbol("=") => Operator::Eq,
            TokenKind::Symbol("!=" | "<>") => Operator::Ne,
            TokenKind::Symbol("<") => Operator::Lt,
            TokenKind::Symbol("<=") => Operator::Le,
            TokenKind::Symbol(">") => Operator::Gt,
            TokenKind::Symbol(">=") => Operator::Ge,
            _ => return Err(self.unexpected_at(&token)),
        };
        Ok(Test::Compare(operator, self.value(path)?))
    }

    /// `IN (a, b)`; semi-join subqueries are refused by name.
    fn in_list(&mut self, path: &FieldPath, negated: bool) -> Result<Test, SoqlError> {
        self.expect_symbol("(")?;
        if self.is_keyword("SELECT") {
            return Err(self.unsupported(&self.peek().clone(), "A semi-join subquery"));
        }
        let mut values = vec![self.value(path)?];
        while self.eat_symbol(",") {
            values.push(self.value(path)?);
        }
        self.expect_symbol(")")?;
        Ok(Test::In { values, negated })
    }

    /// A `LIKE` pattern must be a quoted string the field accepts.
    fn like_pattern(&mut self, path: &FieldPath) -> Result<Test, SoqlError> {
        let token = self.peek().clone();
        if let Literal::Text(_) = self.value(path)? {
            let TokenKind::Text(chars) = token.kind else {
                return Err(self.unexpected_at(&token));
            };
            return Ok(Test::Like(compile_like(&chars)));
        }
        Err(self.unexpected_at(&token))
    }

    /// The next literal, type-checked against the field as Salesforce does.
    fn value(&mut self, path: &FieldPath) -> Result<Literal, SoqlError> {
        let token = self.advance();
        let literal = self.literal(&token)?;
        match type_mismatch(path.field, &literal) {
            None => Ok(literal),
            Some(detail) => Err(SoqlError::at(self.src, token.start, INVALID_FIELD, &detail)),
        }
    }

    /// A literal token's value, before type checking.
    fn literal(&mut self, token: &Token) -> Result<Literal, SoqlError> {
        let text = self.text(token);
        let literal = match &token.kind {
            TokenKind::Text(chars) => Some(Literal::Text(chars.iter().map(|(c, _)| c).collect())),
            TokenKind::Number => text.parse().ok().map(Literal::Number),
            TokenKind::Date => parse_date(text).map(Literal::Date),
            TokenKind::DateTime => DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|at| Literal::DateTime(at.timestamp_millis())),
            TokenKind::Word(word) => return self.word_literal(token, word),
            TokenKind::Symbol(_) | TokenKind::End => None,
        };
        literal.ok_or_else(|| self.unexpected_at(token))
    }

    /// `NULL`, `TRUE`, `FALSE` and the relative date literals.
    fn word_literal(&mut self, token: &Token, word: &str) -> Result<Literal, SoqlError> {
        let upper = word.to_ascii_uppercase();
        match upper.as_str() {
            "NULL" => return Ok(Literal::Null),
            "TRUE" => return Ok(Literal::Bool(true)),
            "FALSE" => return Ok(Literal::Bool(false)),
            _ => {}
        }
        if let Some((start, end)) = fixed_range(&upper, self.today) {
            return Ok(Literal::Range { start, end });
        }
        if N_RANGES.contains(&upper.as_str()) {
            self.expect_symbol(":")?;
            let n = self.count()?;
            // A million days reaches far past any record; beyond it the day arithmetic would
            // overflow, so larger counts are refused as out of range.
            let n = i32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_RELATIVE_COUNT)
                .ok_or_else(|| SoqlError {
                    code: "NUMBER_OUTSIDE_VALID_RANGE",
                    message: format!(
                        "{upper}:{n} is out of range: the most is {MAX_RELATIVE_COUNT}"
                    ),
                })?;
            if let Some((start, end)) = n_range(&upper, n, self.today) {
                return Ok(Literal::Range { start, end });
            }
        }
        Err(self.unexpected_at(token))
    }

    /// `GROUP BY` and `HAVING` are refused by name rather than as stray tokens.
    fn refuse_grouping(&self) -> Result<(), SoqlError> {
        let token = self.peek().clone();
        if self.is_keyword("GROUP") {
            return Err(self.unsupported(&token, "GROUP BY"));
        }
        if self.is_keyword("HAVING") {
            return Err(self.unsupported(&token, "HAVING"));
        }
        Ok(())
    }

    // --- ORDER BY, LIMIT, OFFSET

    /// `path [ASC|DESC] [NULLS FIRST|LAST], ...`.
    fn order_keys(&mut self, object: &'static ObjectDef) -> Result<Vec<OrderKey>, SoqlError> {
        let mut keys = Vec::new();
        loop {
            let path = self.clause_path(object, "sorted")?;
            let descending = if self.eat_keyword("DESC") {
                true
            } else {
                self.eat_keyword("ASC");
                false
            };
            let nulls_last = if self.eat_keyword("NULLS") {
                if self.eat_keyword("LAST") {
                    true
                } else {
                    self.expect_keyword("FIRST")?;
                    false
                }
            } else {
                descending
            };
            keys.push(OrderKey {
                path,
                descending,
                nulls_last,
            });
            if !self.eat_symbol(",") {
                return Ok(keys);
            }
        }
    }

    /// `LIMIT n` or `OFFSET n`, when present.
    fn count_clause(&mut self, keyword: &str) -> Result<Option<usize>, SoqlError> {
        if self.eat_keyword(keyword) {
            self.count().map(Some)
        } else {
            Ok(None)
        }
    }

    /// A non-negative integer token.
    fn count(&mut self) -> Result<usize, SoqlError> {
        let token = self.advance();
        let parsed = match token.kind {
            TokenKind::Number => self.text(&token).parse::<usize>().ok(),
            _ => None,
        };
        parsed.ok_or_else(|| self.unexpected_at(&token))
    }
}

/// The reference field behind relationship `name` of `object`, and the object it leads to
/// (the `Name` pseudo-object when the reference is polymorphic).
fn relationship_target(object: &ObjectDef, name: &str) -> Option<(usize, &'static ObjectDef)> {
    let index = object.relationship_field(name)?;
    let targets = object.fields[index].reference_to;
    let target = if targets.len() >= 2 {
        &schema::NAME
    } else {
        schema::object(targets.first()?)?
    };
    Some((index, target))
}

/// Salesforce's refusal when a literal is not of the field's type, or `None` when it is.
fn type_mismatch(field: &FieldDef, literal: &Literal) -> Option<String> {
    let (expected, quoted) = match field.kind {
        FieldType::Id => ("id", true),
        FieldType::Reference => ("reference", true),
        FieldType::String | FieldType::Picklist | FieldType::Email | FieldType::TextArea => {
            ("string", true)
        }
        FieldType::Currency | FieldType::Percent => ("double", false),
        FieldType::Int => ("int", false),
        FieldType::Boolean => ("boolean", false),
        FieldType::Date => ("date", false),
        FieldType::DateTime => ("dateTime", false),
        FieldType::AnyType => return None,
    };
    let fits = match literal {
        Literal::Null => true,
        Literal::Text(_) => quoted,
        Literal::Number(_) => matches!(expected, "double" | "int"),
        Literal::Bool(_) => expected == "boolean",
        Literal::Date(_) => expected == "date",
        Literal::DateTime(_) => expected == "dateTime",
        Literal::Range { .. } => matches!(expected, "date" | "dateTime"),
    };
    let should = if quoted { "should" } else { "should not" };
    (!fits).then(|| {
        format!(
            "value of filter criterion for field '{}' must be of type {expected} and {should} be enclosed in quotes",
            field.name
        )
    })
}

/// `2024-01-31` as days since 1970-01-01.
fn parse_date(text: &str) -> Option<i32> {
    if text.len() != 10 {
        return None;
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date_days(date))
}

/// Days since 1970-01-01, the unit of [`SfValue::Date`].
fn date_days(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - schema::EPOCH_DAYS_FROM_CE
}

/// Day number of the first day of month number `month` (months since year 0, January = 0).
fn month_start(month: i32) -> i32 {
    NaiveDate::from_ymd_opt(month.div_euclid(12), month.rem_euclid(12) as u32 + 1, 1)
        .map_or(0, date_days)
}

/// The month number (see [`month_start`]) of a day.
fn month_of(day: i32) -> i32 {
    let date =
        NaiveDate::from_num_days_from_ce_opt(day + schema::EPOCH_DAYS_FROM_CE).unwrap_or_default();
    date.year() * 12 + date.month0() as i32
}

/// Sunday of the week holding `day` (1970-01-01 was a Thursday).
fn week_start(day: i32) -> i32 {
    day - (day + 4).rem_euclid(7)
}

/// Months `[first, first + count)` as days.
fn months(first: i32, count: i32) -> (i32, i32) {
    (month_start(first), month_start(first + count))
}

/// Relative literals without a parameter, as `[start, end)` days.
fn fixed_range(name: &str, today: i32) -> Option<(i32, i32)> {
    let month = month_of(today);
    let quarter = month - month.rem_euclid(12) % 3;
    let year = month - month.rem_euclid(12);
    let week = week_start(today);
    Some(match name {
        "TODAY" => (today, today + 1),
        "YESTERDAY" => (today - 1, today),
        "TOMORROW" => (today + 1, today + 2),
        "LAST_WEEK" => (week - 7, week),
        "THIS_WEEK" => (week, week + 7),
        "NEXT_WEEK" => (week + 7, week + 14),
        "LAST_MONTH" => months(month - 1, 1),
        "THIS_MONTH" => months(month, 1),
        "NEXT_MONTH" => months(month + 1, 1),
        "LAST_90_DAYS" => (today - 90, today + 1),
        "NEXT_90_DAYS" => (today + 1, today + 91),
        "LAST_QUARTER" => months(quarter - 3, 3),
        "THIS_QUARTER" => months(quarter, 3),
        "NEXT_QUARTER" => months(quarter + 3, 3),
        "LAST_YEAR" => months(year - 12, 12),
        "THIS_YEAR" => months(year, 12),
        "NEXT_YEAR" => months(year + 12, 12),
        _ => return None,
    })
}

/// The largest `n` of a relative literal such as `LAST_N_DAYS:n`.
const MAX_RELATIVE_COUNT: i32 = 1_000_000;

/// Relative literals taking `:n`.
const N_RANGES: [&str; 5] = [
    "LAST_N_DAYS",
    "NEXT_N_DAYS",
    "N_DAYS_AGO",
    "LAST_N_MONTHS",
    "NEXT_N_MONTHS",
];

/// `LAST_N_DAYS:n` includes today; `NEXT_N_DAYS:n` starts tomorrow; the month forms cover
/// whole months, excluding the current one.
fn n_range(name: &str, n: i32, today: i32) -> Option<(i32, i32)> {
    let month = month_of(today);
    Some(match name {
        "LAST_N_DAYS" => (today - n, today + 1),
        "NEXT_N_DAYS" => (today + 1, today + 1 + n),
        "N_DAYS_AGO" => (today - n, today - n + 1),
        "LAST_N_MONTHS" => months(month - n, n),
        "NEXT_N_MONTHS" => months(month + 1, n),
        _ => return None,
    })
}

/// `%` and `_` are wildcards unless escaped; letters are lower-cased for a case-blind match.
fn compile_like(chars: &[(char, bool)]) -> Vec<PatternPart> {
    chars
        .iter()
        .flat_map(|&(c, escaped)| match c {
            '%' if !escaped => vec![PatternPart::AnyRun],
            '_' if !escaped => vec![PatternPart::AnyOne],
            _ => c.to_lowercase().map(PatternPart::Char).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::salesforce::schema::{LEAD, NAME, OPPORTUNITY};

    /// 2024-05-15T12:00:00Z, a Wednesday in Q2.
    fn now() -> Millis {
        at("2024-05-15T12:00:00Z")
    }

    fn at(text: &str) -> Millis {
        DateTime::parse_from_rfc3339(text)
            .expect("test datetime")
            .timestamp_millis()
    }

    fn day(text: &str) -> SfValue {
        SfValue::Date(parse_date(text).expect("test date"))
    }

    fn query(soql: &str) -> Query {
        parse(soql, now()).unwrap_or_else(|error| panic!("{soql}: {error}"))
    }

    fn error(soql: &str) -> SoqlError {
        match parse(soql, now()) {
            Ok(_) => panic!("{soql} parsed"),
            Err(error) => error,
        }
    }

    /// Resolves nothing: own-field queries never ask.
    struct NoParents;

    impl Resolver for NoParents {
        fn parent(&self, _: &FieldDef, _: &str) -> Option<SfRecord> {
            None
        }
    }

    /// A queue owning leads through the polymorphic `Owner`.
    struct Queues;

    impl Resolver for Queues {
        fn parent(&self, reference: &FieldDef, id: &str) -> Option<SfRecord> {
            assert_eq!(reference.name, "OwnerId");
            (id == "00G5e000000QueueAAA").then(|| {
                let mut owner = SfRecord::empty(&NAME);
                owner.set("Id", SfValue::text(Some(id)));
                owner.set("Name", SfValue::text(Some("Recycle Queue")));
                owner.set("Type", SfValue::text(Some("Queue")));
                owner
            })
        }
    }

    fn opportunity(id: &str, values: &[(&str, SfValue)]) -> SfRecord {
        let mut record = SfRecord::empty(&OPPORTUNITY);
        record.set("Id", SfValue::text(Some(id)));
        for (name, value) in values {
            record.set(name, value.clone());
        }
        record
    }

    fn text(value: &str) -> SfValue {
        SfValue::text(Some(value))
    }

    fn matching(soql: &str, records: &[SfRecord]) -> Vec<String> {
        let query = query(soql);
        records
            .iter()
            .filter(|record| query.matches(record, &NoParents))
            .map(|record| record.id().to_string())
            .collect()
    }

    fn sample() -> Vec<SfRecord> {
        vec![
            opportunity(
                "0065e000001AAAAAA1",
                &[
                    ("Name", text("Acme renewal")),
                    ("StageName", text("Prospecting")),
                    ("Amount", SfValue::Number(5000.0)),
                    ("IsClosed", SfValue::Bool(false)),
                    ("CloseDate", day("2024-05-15")),
                ],
            ),
            opportunity(
                "0065e000001BBBBBB2",
                &[
                    ("Name", text("Globex 100% upsell")),
                    ("StageName", text("Closed Won")),
                    ("Amount", SfValue::Number(12000.0)),
                    ("IsClosed", SfValue::Bool(true)),
                    ("CloseDate", day("2024-04-30")),
                ],
            ),
            opportunity(
                "0065e000001CCCCCC3",
                &[
                    ("Name", text("Initech")),
                    ("IsClosed", SfValue::Bool(false)),
                ],
            ),
        ]
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn parses_a_typical_incremental_query() {
        let query = query(
            "SELECT Id, Name, StageName, Owner.Name FROM Opportunity WHERE SystemModstamp >= 2024-01-02T03:04:05.000000Z ORDER BY SystemModstamp ASC, Id ASC LIMIT 10",
        );
        assert_eq!(query.object.name, "Opportunity");
        let Selection::Fields(paths) = &query.select else {
            panic!("fields expected");
        };
        let names: Vec<&str> = paths.iter().map(|path| path.field.name).collect();
        assert_eq!(names, ["Id", "Name", "StageName", "Name"]);
        let owner = &paths[3];
        assert_eq!(owner.steps, [OPPORTUNITY.field_index("OwnerId").unwrap()]);
        assert_eq!(owner.relationships, ["Owner"]);
        assert_eq!(
            owner.index,
            schema::USER_OBJECT.field_index("Name").unwrap()
        );
        let Some(Expr::Condition(condition)) = &query.filter else {
            panic!("one condition expected");
        };
        assert_eq!(condition.path.field.name, "SystemModstamp");
        assert!(matches!(
            &condition.test,
            Test::Compare(Operator::Ge, Literal::DateTime(ms)) if *ms == at("2024-01-02T03:04:05Z")
        ));
        let keys: Vec<(&str, bool, bool)> = query
            .order
            .iter()
            .map(|key| (key.path.field.name, key.descending, key.nulls_last))
            .collect();
        assert_eq!(
            keys,
            [("SystemModstamp", false, false), ("Id", false, false)]
        );
        assert_eq!((query.limit, query.offset), (Some(10), None));
    }

    #[test]
    fn huge_relative_counts_are_out_of_range_not_an_overflow() {
        let err = parse(
            "SELECT Id FROM Lead WHERE CreatedDate = NEXT_N_DAYS:2147483647",
            now(),
        )
        .unwrap_err();
        assert_eq!(err.code, "NUMBER_OUTSIDE_VALID_RANGE");
    }

    #[test]
    fn names_and_keywords_ignore_case_and_whitespace() {
        let query = query("select\n  id ,stagename\nfrom OPPORTUNITY\twhere AMOUNT > 10 order by NAME desc limit 5 offset 2000");
        let Selection::Fields(paths) = &query.select else {
            panic!("fields expected");
        };
        assert_eq!(paths[1].field.name, "StageName");
        assert!(query.order[0].descending && query.order[0].nulls_last);
        assert_eq!(query.offset, Some(2000));
        let prefixed = self::query("SELECT Opportunity.Name FROM Opportunity");
        let Selection::Fields(paths) = &prefixed.select else {
            panic!("fields expected");
        };
        assert!(
            paths[0].steps.is_empty(),
            "the object's own name is not a relationship"
        );
    }

    #[test]
    fn count_query() {
        let query = query("SELECT COUNT ( ) FROM Lead WHERE IsConverted = false");
        assert!(matches!(query.select, Selection::Count));
        assert_eq!(query.object.name, "Lead");
    }

    #[test]
    fn evaluates_and_or_not_in_like_and_null() {
        let records = sample();
        let [a, b, c] = [
            "0065e000001AAAAAA1",
            "0065e000001BBBBBB2",
            "0065e000001CCCCCC3",
        ];
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE IsClosed = false AND Amount > 1000",
                &records
            ),
            ids(&[a])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE Amount >= 12000 OR Amount = null",
                &records
            ),
            ids(&[b, c])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE NOT (IsClosed = true OR Amount = null)",
                &records
            ),
            ids(&[a])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE StageName IN ('closed won', 'Lost')",
                &records
            ),
            ids(&[b])
        );
        // NOT IN and != keep empty fields, as Salesforce does.
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE StageName NOT IN ('Closed Won')",
                &records
            ),
            ids(&[a, c])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE StageName != 'PROSPECTING'",
                &records
            ),
            ids(&[b, c])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE StageName != null",
                &records
            ),
            ids(&[a, b])
        );
        assert_eq!(
            matching("SELECT Id FROM Opportunity WHERE Amount < 100000", &records),
            ids(&[a, b])
        );
        assert_eq!(
            matching("SELECT Id FROM Opportunity WHERE Name LIKE 'a%'", &records),
            ids(&[a])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE Name LIKE '%100\\% UP%'",
                &records
            ),
            ids(&[b])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE Name LIKE 'Init_ch'",
                &records
            ),
            ids(&[c])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE Name LIKE '%\\_%'",
                &records
            ),
            ids(&[])
        );
        assert_eq!(
            matching(
                "SELECT Id FROM Opportunity WHERE Amount > -5.5 AND CloseDate < 2024-05-01",
                &records
            ),
            ids(&[b])
        );
    }

    #[test]
    fn mixing_and_with_or_needs_parentheses() {
        let error =
            error("SELECT Id FROM Opportunity WHERE Amount > 1 AND Amount < 5 OR IsClosed = true");
        assert_eq!(error.code, "MALFORMED_QUERY");
        assert!(
            error
                .message
                .ends_with("ERROR at Row:1:Column:60\nunexpected token: 'OR'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn ids_match_across_15_and_18_characters() {
        let records = sample();
        let found = |soql: &str| matching(soql, &records);
        assert_eq!(
            found("SELECT Id FROM Opportunity WHERE Id = '0065e000001AAAA'"),
            ids(&["0065e000001AAAAAA1"])
        );
        assert_eq!(
            found("SELECT Id FROM Opportunity WHERE Id = '0065E000001AAAA'"),
            ids(&[])
        );
        assert_eq!(
            found("SELECT Id FROM Opportunity WHERE Id = '0065E000001AAAAAA1'"),
            ids(&["0065e000001AAAAAA1"])
        );
        assert_eq!(
            found("SELECT Id FROM Opportunity WHERE Id IN ('0065e000001CCCC', 'x')"),
            ids(&["0065e000001CCCCCC3"])
        );
    }

    #[test]
    fn string_escapes() {
        let query = query(r"SELECT Id FROM Opportunity WHERE Name = 'O\'Brien \\ \n'");
        let Some(Expr::Condition(condition)) = &query.filter else {
            panic!("condition expected");
        };
        assert!(
            matches!(&condition.test, Test::Compare(_, Literal::Text(value)) if value == "O'Brien \\ \n")
        );
        let error = error(r"SELECT Id FROM Opportunity WHERE Name = 'bad \q'");
        assert_eq!(error.code, "MALFORMED_QUERY");
    }

    #[test]
    fn datetime_literals_normalise_to_utc() {
        let cases = [
            ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
            ("2024-01-02T03:04:05.123Z", "2024-01-02T03:04:05.123Z"),
            ("2024-01-02T03:04:05.000000Z", "2024-01-02T03:04:05Z"),
            ("2024-01-02T03:04:05+01:00", "2024-01-02T02:04:05Z"),
            ("2024-01-02T03:04:05.5-08:00", "2024-01-02T11:04:05.500Z"),
        ];
        for (literal, utc) in cases {
            let query = query(&format!(
                "SELECT Id FROM Opportunity WHERE CreatedDate = {literal}"
            ));
            let Some(Expr::Condition(condition)) = &query.filter else {
                panic!("condition expected");
            };
            assert!(
                matches!(&condition.test, Test::Compare(_, Literal::DateTime(ms)) if *ms == at(utc)),
                "{literal}"
            );
        }
    }

    /// Whether a record with `CreatedDate` at `created` and `CloseDate` on `close` passes.
    fn dated(condition: &str, created: &str, close: &str) -> bool {
        let record = opportunity(
            "0065e000001AAAAAA1",
            &[
                ("CreatedDate", SfValue::DateTime(at(created))),
                ("CloseDate", day(close)),
            ],
        );
        query(&format!("SELECT Id FROM Opportunity WHERE {condition}")).matches(&record, &NoParents)
    }

    #[test]
    fn relative_date_literals() {
        let (created, close) = ("2024-05-15T00:00:00Z", "2024-05-15");
        assert!(dated(
            "CreatedDate = TODAY AND CloseDate = TODAY",
            created,
            close
        ));
        assert!(!dated("CreatedDate > TODAY", "2024-05-15T23:59:59Z", close));
        assert!(dated("CreatedDate > TODAY", "2024-05-16T00:00:00Z", close));
        assert!(dated("CreatedDate < TODAY", "2024-05-14T23:59:59Z", close));
        assert!(dated(
            "CreatedDate <= TODAY AND CreatedDate >= TODAY",
            "2024-05-15T23:59:59Z",
            close
        ));
        assert!(dated(
            "CreatedDate != YESTERDAY AND CloseDate = TOMORROW",
            created,
            "2024-05-16"
        ));
        // Weeks start on Sunday: 2024-05-12 to 2024-05-18.
        assert!(dated("CloseDate = THIS_WEEK", created, "2024-05-12"));
        assert!(dated("CloseDate = LAST_WEEK", created, "2024-05-11"));
        assert!(dated("CloseDate = NEXT_WEEK", created, "2024-05-25"));
        assert!(dated(
            "CloseDate = THIS_MONTH AND CreatedDate = THIS_QUARTER",
            "2024-04-01T00:00:00Z",
            "2024-05-31"
        ));
        assert!(dated(
            "CloseDate = LAST_MONTH AND CreatedDate = LAST_QUARTER",
            "2024-03-31T23:00:00Z",
            "2024-04-01"
        ));
        assert!(dated(
            "CloseDate = NEXT_MONTH AND CreatedDate = NEXT_QUARTER",
            "2024-09-30T23:00:00Z",
            "2024-06-30"
        ));
        assert!(dated(
            "CloseDate = THIS_YEAR AND CreatedDate = LAST_YEAR",
            "2023-01-01T00:00:00Z",
            "2024-12-31"
        ));
        assert!(dated("CloseDate = NEXT_YEAR", created, "2025-01-01"));
        // LAST_N_DAYS:1 is yesterday and today; NEXT_N_DAYS starts tomorrow.
        assert!(dated("CloseDate = LAST_N_DAYS:1", created, "2024-05-14"));
        assert!(!dated("CloseDate = LAST_N_DAYS:1", created, "2024-05-13"));
        assert!(dated("CloseDate = LAST_90_DAYS", created, "2024-02-15"));
        assert!(!dated("CloseDate = LAST_90_DAYS", created, "2024-02-14"));
        assert!(!dated("CloseDate = NEXT_N_DAYS:2", created, "2024-05-15"));
        assert!(dated("CloseDate = NEXT_N_DAYS:2", created, "2024-05-17"));
        assert!(dated("CloseDate = NEXT_90_DAYS", created, "2024-08-13"));
        assert!(dated(
            "CreatedDate = N_DAYS_AGO:3",
            "2024-05-12T08:00:00Z",
            close
        ));
        assert!(dated("CloseDate = LAST_N_MONTHS:2", created, "2024-03-01"));
        assert!(!dated("CloseDate = LAST_N_MONTHS:2", created, "2024-05-01"));
        assert!(dated("CloseDate = NEXT_N_MONTHS:1", created, "2024-06-30"));
        assert!(!dated("CloseDate = NEXT_N_MONTHS:1", created, "2024-05-31"));
    }

    #[test]
    fn ordering_puts_nulls_where_soql_does() {
        let records = vec![
            opportunity("006000000000003", &[("Name", text("beta"))]),
            opportunity("006000000000001", &[]),
            opportunity("006000000000002", &[("Name", text("Alpha"))]),
        ];
        let order = |soql: &str| {
            let query = query(soql);
            let mut sorted = records.clone();
            sorted.sort_by(|a, b| {
                query.compare_keys(
                    &query.sort_keys(a, &NoParents),
                    &query.sort_keys(b, &NoParents),
                )
            });
            sorted
                .iter()
                .map(|record| record.id().to_string())
                .collect::<Vec<_>>()
        };
        let (beta, empty, alpha) = ("006000000000003", "006000000000001", "006000000000002");
        assert_eq!(
            order("SELECT Id FROM Opportunity ORDER BY Name"),
            ids(&[empty, alpha, beta])
        );
        assert_eq!(
            order("SELECT Id FROM Opportunity ORDER BY Name DESC"),
            ids(&[beta, alpha, empty])
        );
        assert_eq!(
            order("SELECT Id FROM Opportunity ORDER BY Name ASC NULLS LAST"),
            ids(&[alpha, beta, empty])
        );
        assert_eq!(
            order("SELECT Id FROM Opportunity ORDER BY Name DESC NULLS FIRST"),
            ids(&[empty, beta, alpha])
        );
        assert_eq!(
            order("SELECT Id FROM Opportunity ORDER BY Amount, Id DESC"),
            ids(&[beta, alpha, empty])
        );
    }

    #[test]
    fn polymorphic_owner_resolves_through_the_name_object() {
        let query =
            query("SELECT Id, Owner.Name FROM Lead WHERE Owner.Type = 'Queue' ORDER BY Owner.Name");
        let Selection::Fields(paths) = &query.select else {
            panic!("fields expected");
        };
        assert_eq!(paths[1].index, NAME.field_index("Name").unwrap());
        let mut lead = SfRecord::empty(&LEAD);
        lead.set("OwnerId", text("00G5e000000QueueAAA"));
        assert_eq!(paths[1].value(&lead, &Queues), text("Recycle Queue"));
        assert!(query.matches(&lead, &Queues));
        lead.set("OwnerId", text("0055e000000PwEmAAG"));
        assert_eq!(paths[1].value(&lead, &Queues), SfValue::Null);
        assert!(!query.matches(&lead, &Queues));
        let error = error("SELECT Owner.Company FROM Lead");
        assert!(
            error
                .message
                .contains("No such column 'Company' on entity 'Name'"),
            "{}",
            error.message
        );
    }

    #[test]
    fn unknown_field_has_the_caret_diagram() {
        let error = error("SELECT Id, Foo FROM Opportunity");
        assert_eq!(error.code, "INVALID_FIELD");
        assert_eq!(
            error.message,
            "\nSELECT Id, Foo FROM Opportunity\n           ^\nERROR at Row:1:Column:12\nNo such column 'Foo' on entity 'Opportunity'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."
        );
    }

    #[test]
    fn error_rows_count_lines() {
        let error = error("SELECT Id\nFROM Opportunity\nWHERE  Bar = 1");
        assert!(
            error.message.starts_with(
                "\nWHERE  Bar = 1\n       ^\nERROR at Row:3:Column:8\nNo such column 'Bar'"
            ),
            "{}",
            error.message
        );
    }

    #[test]
    fn unknown_and_unqueryable_objects() {
        let error = error("SELECT Id FROM Widget__c");
        assert_eq!(error.code, "INVALID_TYPE");
        assert_eq!(
            error.message,
            "\nSELECT Id FROM Widget__c\n               ^\nERROR at Row:1:Column:16\nsObject type 'Widget__c' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
        );
        let error = self::error("SELECT Id FROM Name");
        assert_eq!(error.code, "INVALID_TYPE");
        assert!(error
            .message
            .contains("sObject type 'Name' is not supported."));
    }

    #[test]
    fn syntax_errors() {
        let error = error("SELECT Id FRM Opportunity");
        assert_eq!(error.code, "MALFORMED_QUERY");
        assert_eq!(
            error.message,
            "\nSELECT Id FRM Opportunity\n          ^\nERROR at Row:1:Column:11\nunexpected token: 'FRM'"
        );
        let error = self::error("SELECT Id FROM Opportunity WHERE");
        assert_eq!(
            error.message,
            "\nSELECT Id FROM Opportunity WHERE\n                                ^\nERROR at Row:1:Column:33\nunexpected token: <EOF>"
        );
        let star = self::error("SELECT * FROM Opportunity");
        assert!(
            star.message.ends_with("Column:8\nunexpected token: '*'"),
            "{}",
            star.message
        );
        for soql in [
            "SELECT Id FROM Opportunity LIMIT -1",
            "SELECT Id FROM Opportunity LIMIT 1.5",
            "SELECT Id FROM Opportunity OFFSET x",
            "SELECT Id FROM Opportunity WHERE Name = :name",
        ] {
            assert_eq!(self::error(soql).code, "MALFORMED_QUERY", "{soql}");
        }
    }

    #[test]
    fn unknown_relationship() {
        let error = error("SELECT Foo.Name FROM Opportunity");
        assert_eq!(error.code, "INVALID_FIELD");
        assert_eq!(
            error.message,
            "\nSELECT Foo.Name FROM Opportunity\n       ^\nERROR at Row:1:Column:8\nDidn't understand relationship 'Foo' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
        );
    }

    #[test]
    fn literal_types_are_checked_like_salesforce() {
        let cases = [
            (
                "CreatedDate > '2024-01-01T00:00:00Z'",
                "CreatedDate",
                "dateTime and should not",
            ),
            (
                "CreatedDate > 2024-01-01",
                "CreatedDate",
                "dateTime and should not",
            ),
            (
                "CloseDate = 2024-01-01T00:00:00Z",
                "CloseDate",
                "date and should not",
            ),
            ("Amount = '5'", "Amount", "double and should not"),
            ("IsClosed = 'true'", "IsClosed", "boolean and should not"),
            ("Name = 5", "Name", "string and should"),
            ("Amount LIKE '5%'", "Amount", "double and should not"),
        ];
        for (condition, field, kind) in cases {
            let soql = format!("SELECT Id FROM Opportunity WHERE {condition}");
            let error = error(&soql);
            assert_eq!(error.code, "INVALID_FIELD", "{condition}");
            let column =
                soql.find(condition).unwrap() + condition.find(['\'', '2', '5']).unwrap() + 1;
            let expected = format!(
                "ERROR at Row:1:Column:{column}\nvalue of filter criterion for field '{field}' must be of type {kind} be enclosed in quotes"
            );
            assert!(error.message.ends_with(&expected), "{}", error.message);
        }
    }

    #[test]
    fn unfilterable_and_unsortable_fields() {
        let error = error("SELECT Id FROM OpportunityFieldHistory WHERE OldValue = 'x'");
        assert_eq!(error.code, "INVALID_FIELD");
        assert!(
            error.message.ends_with(
                "ERROR at Row:1:Column:46\nfield 'OldValue' can not be filtered in a query call"
            ),
            "{}",
            error.message
        );
        let error = self::error("SELECT Id FROM OpportunityFieldHistory ORDER BY newvalue");
        assert!(
            error
                .message
                .ends_with("field 'NewValue' can not be sorted in a query call"),
            "{}",
            error.message
        );
        assert!(parse("SELECT OldValue FROM OpportunityFieldHistory", now()).is_ok());
    }

    #[test]
    fn offset_over_2000_is_out_of_range() {
        let error = error("SELECT Id FROM Opportunity LIMIT 10 OFFSET 2001");
        assert_eq!(
            error,
            SoqlError {
                code: "NUMBER_OUTSIDE_VALID_RANGE",
                message: "Maximum SOQL offset allowed is 2000".to_string(),
            }
        );
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            (
                "SELECT Id, (SELECT Id FROM OpportunityHistories) FROM Opportunity",
                "relationship subquery",
            ),
            ("SELECT COUNT(Id) FROM Opportunity", "COUNT()"),
            ("SELECT MAX(Amount) FROM Opportunity", "MAX()"),
            ("SELECT FIELDS(ALL) FROM Opportunity", "FIELDS()"),
            (
                "SELECT TYPEOF Owner WHEN User THEN Name END FROM Lead",
                "TYPEOF",
            ),
            (
                "SELECT StageName FROM Opportunity GROUP BY StageName",
                "GROUP BY",
            ),
            (
                "SELECT Id FROM Lead WHERE OwnerId IN (SELECT Id FROM Group)",
                "semi-join",
            ),
        ];
        for (soql, named) in cases {
            let error = error(soql);
            assert_eq!(error.code, "MALFORMED_QUERY", "{soql}");
            assert!(error.message.contains(named), "{soql}: {}", error.message);
            assert!(
                error.message.contains("is not supported"),
                "{soql}: {}",
                error.message
            );
        }
    }
}

//! Expressions over a saga's context, in CEL (the language of Kubernetes and Envoy policies):
//! a step's `when` condition and the input a child saga is started with.
//!
//! The variables of an expression are the context's top-level fields: the saga's input, its
//! generated ids, the declared reply fields of earlier steps and the payload fields of earlier
//! waits. [`check`] runs when a definition loads: every variable must be one of the fields known
//! at that step, and the expression is evaluated once against each field's zero value so that a
//! type error (`amount > 'x'`, `size(count)`) is found then rather than in a running saga. At run
//! time a field that is known but absent (an optional input, a wait that timed out) is `null`.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel::{Context, ExecutionError, Program};
use serde_json::{Map, Value};

use crate::definition::FieldKind;

/// Checks `source` against the fields known where it is used. `want_bool` for a condition.
pub(crate) fn check(
    source: &str,
    known: &BTreeMap<String, FieldKind>,
    want_bool: bool,
) -> Result<(), String> {
    let program = compile(source)?;
    let references = program.references();
    let mut unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|v| !known.contains_key(*v))
        .collect();
    unknown.sort_unstable();
    if let Some(first) = unknown.first() {
        let fields: Vec<&str> = known.keys().map(String::as_str).collect();
        return Err(format!(
            "`{source}` reads `{first}`, which is not a field known at this step (known: {})",
            if fields.is_empty() {
                "none".to_string()
            } else {
                fields.join(", ")
            }
        ));
    }
    let mut context = Context::default();
    for (name, kind) in known {
        context.add_variable_from_value(name.as_str(), zero(*kind));
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(_)) => Ok(()),
        Ok(other) if want_bool => Err(format!(
            "`{source}` must give true or false, not {:?}",
            other.type_of()
        )),
        Ok(_) => Ok(()),
        // Errors that depend on the values, not on the types: not knowable at load.
        Err(
            ExecutionError::DivisionByZero(_)
            | ExecutionError::RemainderByZero(_)
            | ExecutionError::Overflow(..)
            | ExecutionError::IndexOutOfBounds(_)
            | ExecutionError::FunctionError { .. }
            | ExecutionError::NoSuchKey(_),
        ) => Ok(()),
        Err(e) => Err(format!("`{source}`: {e}")),
    }
}

/// Whether the condition holds for `context`.
pub(crate) fn holds(source: &str, context: &Map<String, Value>) -> Result<bool, String> {
    match evaluate(source, context)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!(
            "`{source}` gave {:?}, not true or false",
            other.type_of()
        )),
    }
}

/// The expression's value for `context`, as JSON (a child saga's input field).
pub(crate) fn value(source: &str, context: &Map<String, Value>) -> Result<Value, String> {
    let v = evaluate(source, context)?;
    v.json()
        .map_err(|_| format!("`{source}` gave a value that is not JSON ({:?})", v.type_of()))
}

fn evaluate(source: &str, context: &Map<String, Value>) -> Result<cel::Value, String> {
    let program = compile(source)?;
    let mut ctx = Context::default();
    for name in program.references().variables() {
        let v = context.get(name).map_or(cel::Value::Null, to_cel);
        ctx.add_variable_from_value(name, v);
    }
    program.execute(&ctx).map_err(|e| format!("`{source}`: {e}"))
}

fn compile(source: &str) -> Result<Program, String> {
    // The parser reports a position and a caret on lines of their own: keep it to one line.
    Program::compile(source).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().trim().to_string();
        format!("`{source}` is not a CEL expression: {first}")
    })
}

fn zero(kind: FieldKind) -> cel::Value {
    match kind {
        FieldKind::String | FieldKind::Email | FieldKind::Uuid => cel::Value::String(Arc::new(String::new())),
        FieldKind::Integer => cel::Value::Int(0),
        FieldKind::Boolean => cel::Value::Bool(false),
    }
}

/// JSON to CEL, keeping integers signed (so `amount - 200` is an int, as the checker assumed).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => cel::Value::Null,
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => {
            let map: std::collections::HashMap<String, cel::Value> =
                fields.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> BTreeMap<String, FieldKind> {
        [
            ("amount".to_string(), FieldKind::Integer),
            ("email".to_string(), FieldKind::Email),
            ("approved".to_string(), FieldKind::Boolean),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn well_typed_conditions_over_known_fields_pass() {
        for ok in [
            "amount > 100",
            "amount - 200 < 0 && email.endsWith('@example.com')",
            "approved",
            "amount / amount > 0",
            "email in ['a@b.co']",
        ] {
            assert_eq!(check(ok, &known(), true), Ok(()), "{ok}");
        }
    }

    #[test]
    fn unknown_fields_type_errors_and_syntax_errors_are_named() {
        let e = check("total > 1", &known(), true).unwrap_err();
        assert!(
            e.contains("reads `total`") && e.contains("known: amount, approved, email"),
            "{e}"
        );
        let e = check("amount > 'x'", &known(), true).unwrap_err();
        assert!(e.contains("amount > 'x'"), "{e}");
        let e = check("size(amount) > 1", &known(), true).unwrap_err();
        assert!(e.contains("size"), "{e}");
        let e = check("amount >", &known(), true).unwrap_err();
        assert!(e.contains("is not a CEL expression") && !e.contains('\n'), "{e}");
        let e = check("amount + 1", &known(), true).unwrap_err();
        assert!(e.contains("must give true or false"), "{e}");
        assert_eq!(
            check("amount + 1", &known(), false),
            Ok(()),
            "a child input may be any value"
        );
    }

    #[test]
    fn evaluation_reads_the_context_and_absent_fields_are_null() {
        let ctx = json!({"amount": 150, "email": "a@example.com"});
        let ctx = ctx.as_object().cloned().unwrap_or_default();
        assert_eq!(holds("amount > 100", &ctx), Ok(true));
        assert_eq!(holds("amount - 200 > 0", &ctx), Ok(false), "signed arithmetic");
        assert_eq!(holds("approved == null", &ctx), Ok(true));
        assert!(holds("approved", &ctx).unwrap_err().contains("not true or false"));
        assert_eq!(value("email", &ctx), Ok(json!("a@example.com")));
        assert_eq!(value("amount * 2", &ctx), Ok(json!(300)));
    }
}

//! Machine-readable descriptions of option structs: each field's name, type, default, allowed
//! values and help text, from one definition. The method catalog gives these to every front end:
//! the CLI builds its flags from them, the dashboard its forms, Python its docstrings, and
//! option dicts are checked against them (an unknown key is an error naming the accepted ones).
//!
//! Option structs are written with `options!` (the struct, its serde, its `Default` and its
//! schema from one list of documented fields with their defaults) and their choice types with
//! `choices!` (a unit enum that parses and prints as snake_case names, with aliases).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// What values a field takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// `true` or `false`.
    Boolean,
    /// A whole number (non-negative unless `signed`).
    Integer {
        /// Whether negative values are allowed.
        signed: bool,
    },
    /// A number.
    Number,
    /// Text; `format` says what text (e.g. `head: L9H6 or 9.6`).
    Text {
        /// What the text must look like, when it has a form.
        format: Option<&'static str>,
    },
    /// One of named values.
    Choice {
        /// Each value and what it means.
        values: Vec<Choice>,
    },
    /// A list of values (repeat the flag, or separate by commas).
    List {
        /// The items' kind.
        items: Box<Kind>,
    },
    /// The value or nothing (`null`).
    Optional {
        /// The value's kind.
        value: Box<Kind>,
    },
}

/// One value of a choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The name, as every front end writes it.
    pub name: &'static str,
    /// Other spellings accepted.
    pub aliases: Vec<&'static str>,
    /// What it means.
    pub help: &'static str,
}

/// One field of an option struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// The key (snake_case; the CLI's flag is the same with dashes).
    pub name: &'static str,
    /// What values it takes.
    pub kind: Kind,
    /// Its default, as JSON.
    pub default: Value,
    /// What it does (the field's documentation).
    pub help: String,
}

/// A type that can be a field of an option struct.
pub trait FieldType {
    /// What values it takes.
    fn kind() -> Kind;
}

macro_rules! field_type {
    ($kind:expr => $($t:ty),*) => {
        $(impl FieldType for $t {
            fn kind() -> Kind {
                $kind
            }
        })*
    };
}
field_type!(Kind::Boolean => bool);
field_type!(Kind::Integer { signed: false } => usize, u64, u32, u16, u8);
field_type!(Kind::Integer { signed: true } => i64, i32);
field_type!(Kind::Number => f32, f64);
field_type!(Kind::Text { format: None } => String);

impl<T: FieldType> FieldType for Option<T> {
    fn kind() -> Kind {
        Kind::Optional { value: Box::new(T::kind()) }
    }
}

impl<T: FieldType> FieldType for Vec<T> {
    fn kind() -> Kind {
        Kind::List { items: Box::new(T::kind()) }
    }
}

/// An option struct: its fields' descriptions.
pub trait OptionSchema: Serialize + serde::de::DeserializeOwned + Default {
    /// Every field, in order.
    fn fields() -> Vec<Field>;
}

/// Joins the lines of a doc comment into one paragraph.
pub fn doc_text(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The options in `value` (a JSON object, or `null` for every default), checked against the
/// schema of `O`: an unknown key is an error that lists the accepted ones; a value of the wrong
/// type names its key and what it takes.
pub fn parse_options<O: OptionSchema>(value: &Value, what: &str) -> Result<O> {
    let map = match value {
        Value::Null => return Ok(O::default()),
        Value::Object(m) => m,
        other => return Err(Error::Invalid(format!("the options of `{what}` must be an object of named values, not {other}"))),
    };
    let fields = O::fields();
    for key in map.keys() {
        if !fields.iter().any(|f| f.name == key) {
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let list = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Err(Error::Invalid(format!("`{what}` has no option `{}`; its options are: {list}", crate::error::printable(key))));
        }
    }
    serde_json::from_value::<O>(value.clone()).map_err(|e| Error::Invalid(format!("the options of `{what}`: {e}")))
}

/// The options as JSON with every default filled in (the resolved options of a result).
pub fn resolved<O: Serialize>(o: &O) -> Value {
    as_written(serde_json::to_value(o).unwrap_or(Value::Null))
}

/// `v` with every number that is an `f32` written as the f32's shortest decimal: an option
/// of 0.85 reads `0.85`, not `0.8500000238418579` (the f32 widened to f64).
pub fn as_written(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            let short = x as f32;
            let tidy = if f64::from(short) == x { format!("{short}").parse::<f64>().unwrap_or(x) } else { x };
            serde_json::Number::from_f64(tidy).map_or(Value::Number(n), Value::Number)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(as_written).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, as_written(v))).collect()),
        v => v,
    }
}

/// Parses a command-line string into the JSON value a field of `kind` takes.
pub fn parse_text(kind: &Kind, text: &str) -> std::result::Result<Value, String> {
    let t = text.trim();
    match kind {
        Kind::Boolean => match t {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("`{t}` is not true or false")),
        },
        Kind::Integer { signed } => {
            if *signed {
                t.parse::<i64>().map(Value::from).map_err(|_| format!("`{t}` is not a whole number"))
            } else {
                t.parse::<u64>().map(Value::from).map_err(|_| format!("`{t}` is not a whole number of at least 0"))
            }
        }
        Kind::Number => {
            let v: f64 = t.parse().map_err(|_| format!("`{t}` is not a number"))?;
            serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| format!("`{t}` is not a finite number"))
        }
        Kind::Text { .. } => Ok(Value::String(text.to_string())),
        Kind::Choice { values } => values
            .iter()
            .find(|c| c.name == t || c.aliases.contains(&t))
            .map(|c| Value::String(c.name.to_string()))
            .ok_or_else(|| format!("`{t}` is not one of: {}", values.iter().map(|c| c.name).collect::<Vec<_>>().join(", "))),
        // Text is taken as written (a prompt may be "none", an answer starts with a space).
        Kind::Optional { value } if matches!(value.as_ref(), Kind::Text { .. }) => parse_text(value, text),
        Kind::Optional { value } => match t {
            "" | "none" | "null" => Ok(Value::Null),
            _ => parse_text(value, text),
        },
        Kind::List { items } => t.split(',').filter(|s| !s.trim().is_empty()).map(|s| parse_text(items, s)).collect::<std::result::Result<Vec<_>, _>>().map(Value::Array),
    }
}

/// Declares an option struct: the struct (serde with every field defaulted), its `Default` and
/// its `OptionSchema`, from documented fields with their default values.
#[macro_export]
macro_rules! options {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                pub $field:ident : $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[doc = $fdoc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }

        impl $crate::schema::OptionSchema for $name {
            fn fields() -> Vec<$crate::schema::Field> {
                let d = <$name as Default>::default();
                let _ = &d;
                vec![$(
                    $crate::schema::Field {
                        name: stringify!($field),
                        kind: <$ty as $crate::schema::FieldType>::kind(),
                        default: $crate::schema::as_written(serde_json::to_value(&d.$field).unwrap_or(serde_json::Value::Null)),
                        help: $crate::schema::doc_text(&[$($fdoc),*]),
                    },
                )*]
            }
        }
    };
}

/// Declares a unit enum whose values are names (snake_case, with aliases): serde, `FromStr`,
/// `Display`, `name()` and its `FieldType` from one list of documented variants.
#[macro_export]
macro_rules! choices {
    (
        $(#[doc = $edoc:literal])*
        pub enum $name:ident {
            $(
                $(#[doc = $vdoc:literal])*
                $variant:ident = $vname:literal $(| $alias:literal)*,
            )*
        }
    ) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[doc = $vdoc])*
                $variant,
            )*
        }

        impl $name {
            /// Every value, in order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The value's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $($name::$variant => $vname,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::Error;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                match s {
                    $($vname $(| $alias)* => Ok($name::$variant),)*
                    other => Err($crate::error::Error::Invalid(format!(
                        "`{}` is not a {}; use {}",
                        $crate::error::printable(&other),
                        stringify!($name),
                        [$($vname),*].join(", ")
                    ))),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl $crate::schema::FieldType for $name {
            fn kind() -> $crate::schema::Kind {
                $crate::schema::Kind::Choice {
                    values: vec![$(
                        $crate::schema::Choice {
                            name: $vname,
                            aliases: vec![$($alias),*],
                            help: concat!($($vdoc),*),
                        },
                    )*],
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::choices! {
        /// A test choice.
        pub enum Colour {
            /// Red light.
            Red = "red" | "r",
            /// Green light.
            Green = "green",
        }
    }

    crate::options! {
        /// Test options.
        pub struct Test {
            /// How many.
            /// Two lines of help.
            pub n: usize = 3,
            /// Which colour.
            pub colour: Colour = Colour::Green,
            /// A limit, or none.
            pub limit: Option<f32> = None,
        }
    }

    #[test]
    fn a_schema_comes_from_the_one_definition() {
        let f = Test::fields();
        assert_eq!(f.iter().map(|f| f.name).collect::<Vec<_>>(), ["n", "colour", "limit"]);
        assert_eq!(f[0].help, "How many. Two lines of help.");
        assert_eq!(f[0].default, serde_json::json!(3));
        assert_eq!(f[1].default, serde_json::json!("green"));
        assert!(matches!(&f[1].kind, Kind::Choice { values } if values[0].aliases == ["r"] && values[0].help.contains("Red")));
        let o: Test = parse_options(&serde_json::json!({"colour": "r"}), "test").unwrap();
        assert_eq!((o.n, o.colour), (3, Colour::Red));
        let e = parse_options::<Test>(&serde_json::json!({"colur": "red"}), "test").unwrap_err().to_string();
        assert!(e.contains("no option `colur`") && e.contains("n, colour, limit"), "{e}");
        let e = parse_options::<Test>(&serde_json::json!({"colour": "blue"}), "test").unwrap_err().to_string();
        assert!(e.contains("red, green"), "{e}");
        assert_eq!(parse_text(&f[2].kind, "none").unwrap(), Value::Null);
        assert_eq!(parse_text(&f[2].kind, "0.5").unwrap(), serde_json::json!(0.5));
        assert!(parse_text(&f[0].kind, "-1").is_err());
        assert_eq!(parse_text(&f[1].kind, "r").unwrap(), serde_json::json!("red"));
    }
}

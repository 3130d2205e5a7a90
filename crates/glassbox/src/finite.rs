//! A check that a result holds no NaN or infinite number, for the front ends to run before
//! they print or return one: a non-finite figure is an error that names where it is, never a
//! printed `NaN` (JSON would even turn it into `null`).

use serde::ser::{self, Serialize};

use crate::error::{Error, Result};

/// Error naming the first non-finite number in `value` by its path (`faithfulness.f1`,
/// `scores[3][7]`), or `Ok` when every number is finite.
pub fn check_finite<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut walker = Walker { path: Vec::new(), found: None };
    // The walker's own errors only stop the walk early.
    let _ = value.serialize(&mut walker);
    match walker.found {
        None => Ok(()),
        Some((path, v)) => Err(Error::NonFinite(format!(
            "the result's `{}` is {v}; the model or the inputs give no finite figure here",
            if path.is_empty() { "value".to_string() } else { path }
        ))),
    }
}

struct Walker {
    path: Vec<String>,
    found: Option<(String, f64)>,
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}
impl std::error::Error for Stop {}
impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl Walker {
    fn number(&mut self, v: f64) -> std::result::Result<(), Stop> {
        if v.is_finite() {
            return Ok(());
        }
        let mut path = String::new();
        for p in &self.path {
            if !p.starts_with('[') && !path.is_empty() {
                path.push('.');
            }
            path.push_str(p);
        }
        self.found = Some((path, v));
        Err(Stop)
    }
    fn element<T: Serialize + ?Sized>(&mut self, label: String, v: &T) -> std::result::Result<(), Stop> {
        self.path.push(label);
        let r = v.serialize(&mut *self);
        self.path.pop();
        r
    }
}

type R = std::result::Result<(), Stop>;

/// Collections of every kind: elements get their index (or key) as a path part.
struct Compound<'a> {
    w: &'a mut Walker,
    index: usize,
    key: Option<String>,
}

impl Compound<'_> {
    fn next<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        let label = format!("[{}]", self.index);
        self.index += 1;
        self.w.element(label, v)
    }
}

macro_rules! seq_like {
    ($($t:ident :: $m:ident),*) => {$(
        impl ser::$t for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn $m<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
                self.next(v)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    )*};
}
seq_like!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
        self.key = serde_json::to_value(k).ok().map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        let label = self.key.take().unwrap_or_else(|| "?".into());
        self.w.element(label, v)
    }
    fn end(self) -> R {
        Ok(())
    }
}

macro_rules! struct_like {
    ($($t:ident),*) => {$(
        impl ser::$t for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> R {
                self.w.element(k.to_string(), v)
            }
            fn end(self) -> R {
                Ok(())
            }
        }
    )*};
}
struct_like!(SerializeStruct, SerializeStructVariant);

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_f32(self, v: f32) -> R {
        self.number(v as f64)
    }
    fn serialize_f64(self, v: f64) -> R {
        self.number(v)
    }
    fn serialize_bool(self, _: bool) -> R {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> R {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> R {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> R {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> R {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> R {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> R {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> R {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> R {
        Ok(())
    }
    fn serialize_char(self, _: char) -> R {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> R {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Ok(())
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, variant: &'static str, v: &T) -> R {
        self.element(variant.to_string(), v)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> std::result::Result<Compound<'a>, Stop> {
        Ok(Compound { w: self, index: 0, key: None })
    }
}

#[cfg(test)]
mod tests {
    use super::check_finite;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Inner {
        f1: f32,
    }
    #[derive(serde::Serialize)]
    struct Outer {
        name: String,
        scores: Vec<Vec<f32>>,
        faithfulness: Inner,
        named: BTreeMap<String, f64>,
        maybe: Option<f32>,
    }

    fn outer() -> Outer {
        Outer {
            name: "x".into(),
            scores: vec![vec![1.0, 2.0], vec![3.0, 4.0]],
            faithfulness: Inner { f1: 0.5 },
            named: BTreeMap::from([("L00H01".to_string(), 1.0)]),
            maybe: Some(2.0),
        }
    }

    #[test]
    fn finite_results_pass() {
        assert!(check_finite(&outer()).is_ok());
    }

    #[test]
    fn each_place_of_a_non_finite_number_is_named() {
        let mut o = outer();
        o.scores[1][0] = f32::NAN;
        assert!(check_finite(&o).unwrap_err().to_string().contains("`scores[1][0]` is NaN"));
        let mut o = outer();
        o.faithfulness.f1 = f32::INFINITY;
        assert!(check_finite(&o).unwrap_err().to_string().contains("`faithfulness.f1` is inf"));
        let mut o = outer();
        o.named.insert("L02H03".into(), f64::NEG_INFINITY);
        assert!(check_finite(&o).unwrap_err().to_string().contains("`named.L02H03` is -inf"));
        let mut o = outer();
        o.maybe = Some(f32::NAN);
        assert!(check_finite(&o).unwrap_err().to_string().contains("`maybe`"));
        assert!(check_finite(&f64::NAN).is_err());
    }
}

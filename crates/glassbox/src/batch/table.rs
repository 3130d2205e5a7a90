//! Result rows (JSON objects, one per prompt) as Parquet columns, written and read back with
//! the `parquet` crate's column API (no Arrow).
//!
//! Each top-level field of the rows is one nullable column, its type taken from the first
//! value that is not null:
//! - a number is a `DOUBLE` (every f32 figure exactly), a bool a `BOOLEAN`, a string `UTF8`;
//! - a list of numbers is `list<double>`, a list of lists of numbers `list<list<double>>` (the
//!   per-head figures, `[layer][head]`), in Parquet's three-level `LIST` layout;
//! - anything else (objects, lists of objects or strings, a field null in every row of the
//!   first row group) is its JSON text in a `UTF8` column.
//!
//! A row whose field does not fit its column's type is refused with a message (for a fixed
//! result type only null against a value can differ, which the columns hold).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::file::metadata::KeyValue;
use parquet::record::{Field, List};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A file's key-value metadata, in order.
pub type Metadata = Vec<(String, String)>;

/// The key-value metadata entry listing the columns that hold JSON text.
const JSON_COLUMNS: &str = "glassbox.json_columns";

/// The type of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DOUBLE`.
    Number,
    /// `INT64` (integers: counts, lines, steps).
    Int,
    /// `BOOLEAN`.
    Bool,
    /// `UTF8` text.
    Text,
    /// `list<double>`.
    List,
    /// `list<list<double>>`.
    Matrix,
    /// `list<int64>`.
    IntList,
    /// `list<list<int64>>` (e.g. heads as `[layer, head]` pairs).
    IntMatrix,
    /// `UTF8` JSON text of any value.
    Json,
}

impl Kind {
    /// The kind a value asks for (`None` for null).
    fn of(v: &Value) -> Option<Kind> {
        let numbers = |a: &[Value]| a.iter().all(Value::is_number);
        let ints = |a: &[Value]| !a.is_empty() && a.iter().all(Value::is_i64);
        let rows = |a: &[Value]| a.iter().filter_map(Value::as_array).cloned().collect::<Vec<_>>();
        Some(match v {
            Value::Array(a) if ints(a) => Kind::IntList,
            Value::Array(a) if !a.is_empty() && a.iter().all(|r| r.as_array().is_some_and(|r| numbers(r))) && rows(a).iter().all(|r| r.iter().all(Value::is_i64)) && rows(a).iter().any(|r| !r.is_empty()) => Kind::IntMatrix,
            Value::Null => return None,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            Value::String(_) => Kind::Text,
            Value::Array(a) if numbers(a) => Kind::List,
            Value::Array(a) if a.iter().all(|r| r.as_array().is_some_and(|r| numbers(r))) => Kind::Matrix,
            _ => Kind::Json,
        })
    }
}

/// Columns put first, in this order, when present.
const FIRST: [&str; 3] = ["id", "line", "group"];

/// The columns of a result table: names and kinds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns(pub Vec<(String, Kind)>);

impl Columns {
    /// The columns of `rows`: every field of any row, in first-seen order, each typed by its
    /// first non-null value (JSON text when there is none, or when two rows disagree).
    pub fn infer(rows: &[Map<String, Value>]) -> Columns {
        let mut cols: Vec<(String, Option<Kind>)> = Vec::new();
        for r in rows {
            for (k, v) in r {
                let kind = Kind::of(v);
                match cols.iter_mut().find(|(n, _)| n == k) {
                    None => cols.push((k.clone(), kind)),
                    Some((_, slot)) => match (*slot, kind) {
                        (None, k) => *slot = k,
                        (Some(a), Some(b)) if a != b => *slot = Some(widen(a, b)),
                        _ => {}
                    },
                }
            }
        }
        // The row's identity first (`id`, `line`, `group`), then the rest in order.
        cols.sort_by_key(|(n, _)| FIRST.iter().position(|f| f == n).unwrap_or(FIRST.len()));
        Columns(cols.into_iter().map(|(n, k)| (n, k.unwrap_or(Kind::Json))).collect())
    }

    /// The Parquet schema of these columns.
    fn schema(&self) -> Result<Type> {
        let mut msg = String::from("message glassbox_results {\n");
        for (name, kind) in &self.0 {
            let n = quote_name(name)?;
            msg += &match kind {
                Kind::Number => format!("  optional double {n};\n"),
                Kind::Int => format!("  optional int64 {n};\n"),
                Kind::Bool => format!("  optional boolean {n};\n"),
                Kind::Text | Kind::Json => format!("  optional binary {n} (UTF8);\n"),
                Kind::List | Kind::IntList => format!("  optional group {n} (LIST) {{ repeated group list {{ required {} element; }} }}\n", element(*kind)),
                Kind::Matrix | Kind::IntMatrix => format!(
                    "  optional group {n} (LIST) {{ repeated group list {{ required group element (LIST) {{ repeated group list {{ required {} element; }} }} }} }}\n",
                    element(*kind)
                ),
            };
        }
        msg += "}\n";
        Ok(parquet::schema::parser::parse_message_type(&msg)?)
    }
}

/// The Parquet type of a list column's values.
fn element(kind: Kind) -> &'static str {
    if matches!(kind, Kind::IntList | Kind::IntMatrix) {
        "int64"
    } else {
        "double"
    }
}

/// The kind of a column whose rows ask for two kinds: doubles hold integers and doubles,
/// JSON text any two others.
fn widen(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (Kind::Int, Kind::Number) | (Kind::Number, Kind::Int) => Kind::Number,
        (Kind::IntList, Kind::List) | (Kind::List, Kind::IntList) => Kind::List,
        (Kind::IntMatrix, Kind::Matrix) | (Kind::Matrix, Kind::IntMatrix) => Kind::Matrix,
        _ => Kind::Json,
    }
}

/// A field name as the schema parser takes it: ASCII letters, digits and `_` only.
fn quote_name(name: &str) -> Result<&str> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::Invalid(format!("result field {name:?} cannot be a Parquet column name here (letters, digits and _ only)")));
    }
    Ok(name)
}

fn parquet_err(e: parquet::errors::ParquetError) -> Error {
    // The reader's messages can quote a whole damaged value, byte by byte.
    Error::Invalid(format!("Parquet: {}", crate::error::excerpt(&e, 300)))
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        parquet_err(e)
    }
}

/// Values, definition and repetition levels of one column over a set of rows.
struct Levels<T> {
    values: Vec<T>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

fn number(v: &Value, name: &str) -> Result<f64> {
    v.as_f64().ok_or_else(|| Error::Invalid(format!("result field `{name}`: {v} is not a number")))
}

fn integer(v: &Value, name: &str) -> Result<i64> {
    v.as_i64().ok_or_else(|| Error::Invalid(format!("result field `{name}`: {v} is not an integer")))
}

fn boolean(v: &Value, name: &str) -> Result<bool> {
    v.as_bool().ok_or_else(|| Error::Invalid(format!("result field `{name}`: {v} is not true or false")))
}

fn text(v: &Value, name: &str) -> Result<ByteArray> {
    v.as_str().map(|s| ByteArray::from(s.as_bytes().to_vec())).ok_or_else(|| Error::Invalid(format!("result field `{name}`: {v} is not text")))
}

fn json_text(v: &Value, _: &str) -> Result<ByteArray> {
    Ok(ByteArray::from(v.to_string().into_bytes()))
}

/// The values and definition levels of a nullable scalar column (0 null, 1 a value).
fn scalar<T>(rows: &[Map<String, Value>], name: &str, value: fn(&Value, &str) -> Result<T>) -> Result<Levels<T>> {
    let mut l = Levels { values: Vec::new(), def: Vec::new(), rep: Vec::new() };
    for r in rows {
        match r.get(name).unwrap_or(&Value::Null) {
            Value::Null => l.def.push(0),
            v => {
                l.values.push(value(v, name)?);
                l.def.push(1);
            }
        }
    }
    Ok(l)
}

/// The values and levels of a nullable list (`depth` 1) or list of lists (`depth` 2) column
/// in the three-level LIST layout: definition 0 null, 1 an empty list, 2 an empty inner list
/// (depth 2), `depth + 1` a value; repetition 0 starts a row, 1 an outer item, 2 an inner one.
fn nested<T>(rows: &[Map<String, Value>], name: &str, depth: i16, value: fn(&Value, &str) -> Result<T>) -> Result<Levels<T>> {
    let mut l = Levels { values: Vec::new(), def: Vec::new(), rep: Vec::new() };
    let not_list = |v: &Value| Error::Invalid(format!("result field `{name}`: {v} is not a list{}", if depth == 2 { " of lists" } else { "" }));
    for r in rows {
        match r.get(name).unwrap_or(&Value::Null) {
            Value::Null => {
                l.def.push(0);
                l.rep.push(0);
            }
            Value::Array(a) if a.is_empty() => {
                l.def.push(1);
                l.rep.push(0);
            }
            Value::Array(a) if depth == 1 => {
                for (j, v) in a.iter().enumerate() {
                    l.values.push(value(v, name)?);
                    l.def.push(2);
                    l.rep.push(if j == 0 { 0 } else { 1 });
                }
            }
            Value::Array(a) => {
                for (i, row) in a.iter().enumerate() {
                    let row = row.as_array().ok_or_else(|| not_list(row))?;
                    let start = if i == 0 { 0 } else { 1 };
                    if row.is_empty() {
                        l.def.push(2);
                        l.rep.push(start);
                    }
                    for (j, v) in row.iter().enumerate() {
                        l.values.push(value(v, name)?);
                        l.def.push(3);
                        l.rep.push(if j == 0 { start } else { 2 });
                    }
                }
            }
            v => return Err(not_list(v)),
        }
    }
    Ok(l)
}

/// Writes a column's values with their levels.
trait WriteLevels<T> {
    fn write_batch_levels(&mut self, l: &Levels<T>) -> Result<()>;
}

impl<D: parquet::data_type::DataType> WriteLevels<D::T> for parquet::column::writer::ColumnWriterImpl<'_, D> {
    fn write_batch_levels(&mut self, l: &Levels<D::T>) -> Result<()> {
        // Scalar columns have no repetition levels.
        let rep = (!l.rep.is_empty()).then_some(l.rep.as_slice());
        self.write_batch(&l.values, Some(&l.def), rep)?;
        Ok(())
    }
}

/// Writes `rows` to `path` as one row group (a complete Parquet file), with `metadata` as the
/// file's key-value metadata.
pub fn write_file(path: &Path, columns: &Columns, rows: &[Map<String, Value>], metadata: &[(String, String)]) -> Result<()> {
    let schema = Arc::new(columns.schema()?);
    let json: Vec<&str> = columns.0.iter().filter(|(_, k)| *k == Kind::Json).map(|(n, _)| n.as_str()).collect();
    let mut kv: Vec<KeyValue> = vec![KeyValue::new(JSON_COLUMNS.to_string(), serde_json::to_string(&json).unwrap_or_default())];
    kv.extend(metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).set_key_value_metadata(Some(kv)).build());
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let mut rg = writer.next_row_group()?;
    for (name, kind) in &columns.0 {
        let mut col = rg.next_column()?.ok_or_else(|| Error::Invalid("Parquet: fewer columns than the schema".into()))?;
        match kind {
            Kind::Number => col.typed::<DoubleType>().write_batch_levels(&scalar(rows, name, number)?)?,
            Kind::Int => col.typed::<Int64Type>().write_batch_levels(&scalar(rows, name, integer)?)?,
            Kind::Bool => col.typed::<BoolType>().write_batch_levels(&scalar(rows, name, boolean)?)?,
            Kind::Text => col.typed::<ByteArrayType>().write_batch_levels(&scalar(rows, name, text)?)?,
            Kind::Json => col.typed::<ByteArrayType>().write_batch_levels(&scalar(rows, name, json_text)?)?,
            Kind::List => col.typed::<DoubleType>().write_batch_levels(&nested(rows, name, 1, number)?)?,
            Kind::Matrix => col.typed::<DoubleType>().write_batch_levels(&nested(rows, name, 2, number)?)?,
            Kind::IntList => col.typed::<Int64Type>().write_batch_levels(&nested(rows, name, 1, integer)?)?,
            Kind::IntMatrix => col.typed::<Int64Type>().write_batch_levels(&nested(rows, name, 2, integer)?)?,
        }
        col.close()?;
    }
    rg.close()?;
    writer.close()?;
    Ok(())
}

/// Copies every row group of `parts` (Parquet files with one schema) into `path`, without
/// decoding them; `metadata` becomes the file's key-value metadata.
pub fn concat_files(parts: &[std::path::PathBuf], path: &Path, metadata: &[(String, String)]) -> Result<()> {
    guarded(path, || concat_unguarded(parts, path, metadata))
}

fn concat_unguarded(parts: &[std::path::PathBuf], path: &Path, metadata: &[(String, String)]) -> Result<()> {
    use parquet::column::writer::ColumnCloseResult;
    use parquet::file::metadata::ParquetMetaDataReader;
    let Some(first) = parts.first() else {
        return Err(Error::Invalid("no result parts to join".into()));
    };
    let inputs = parts
        .iter()
        .map(|p| {
            let f = crate::files::open_regular(p).map_err(|e| Error::io(p, e))?;
            let meta = ParquetMetaDataReader::new().parse_and_finish(&f).map_err(|e| Error::Corrupt { path: p.clone(), detail: format!("not a complete Parquet file: {e}") })?;
            Ok((f, meta, p))
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = inputs[0].1.file_metadata().schema_descr().root_schema_ptr();
    for (_, meta, p) in &inputs {
        if meta.file_metadata().schema_descr().root_schema_ptr() != schema {
            return Err(Error::Invalid(format!("{} has other columns than {}; parts of one run share their columns", p.display(), first.display())));
        }
    }
    // The parts' own metadata (which columns hold JSON text), then `metadata`.
    let mut kv: Vec<KeyValue> = inputs[0].1.file_metadata().key_value_metadata().cloned().unwrap_or_default();
    kv.retain(|k| !metadata.iter().any(|(m, _)| *m == k.key));
    kv.extend(metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).set_key_value_metadata(Some(kv)).build());
    let out = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = SerializedFileWriter::new(out, schema, props)?;
    for (input, meta, _) in &inputs {
        for rg in meta.row_groups() {
            let mut rg_out = writer.next_row_group()?;
            for column in rg.columns() {
                let result = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                rg_out.append_column(input, result)?;
            }
            rg_out.close()?;
        }
    }
    writer.close()?;
    Ok(())
}

/// The rows of a Parquet file written by `write_file` or `concat_files`, as JSON objects
/// (JSON-text columns parsed back), with the file's key-value metadata.
pub fn read_file(path: &Path) -> Result<(Vec<Map<String, Value>>, Metadata)> {
    guarded(path, || read_file_unguarded(path))
}

/// Runs a reader of `path` with the `parquet` crate's panics (on damaged files) turned into
/// errors naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| Err(Error::Corrupt { path: path.to_path_buf(), detail: "a damaged Parquet file (the reader failed on it)".into() }))
}

fn read_file_unguarded(path: &Path) -> Result<(Vec<Map<String, Value>>, Metadata)> {
    let f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(f).map_err(|e| Error::Corrupt { path: path.to_path_buf(), detail: format!("not a complete Parquet file: {e}") })?;
    let meta = reader.metadata().file_metadata();
    let kv: Vec<(String, String)> = meta.key_value_metadata().map(|v| v.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())).collect()).unwrap_or_default();
    let json_cols: Vec<String> = kv.iter().find(|(k, _)| k == JSON_COLUMNS).map(|(_, v)| serde_json::from_str(v).unwrap_or_default()).unwrap_or_default();
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let mut m = Map::new();
        for (name, field) in row.get_column_iter() {
            let v = field_value(field);
            let v = match (&v, json_cols.contains(name)) {
                (Value::String(s), true) => serde_json::from_str(s).unwrap_or(v),
                _ => v,
            };
            m.insert(name.clone(), v);
        }
        rows.push(m);
    }
    Ok((rows, kv))
}

fn field_value(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Double(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Field::Float(d) => serde_json::Number::from_f64(*d as f64).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::ListInternal(l) => list_value(l),
        Field::Long(i) => Value::from(*i),
        Field::Int(i) => Value::from(*i),
        other => Value::String(other.to_string()),
    }
}

fn list_value(l: &List) -> Value {
    Value::Array(l.elements().iter().map(field_value).collect())
}

/// The values of column `name` in a Parquet file (read without the other columns' decoding
/// cost mattering at the sizes here), e.g. the ids of a run's finished rows.
pub fn read_column_text(path: &Path, name: &str) -> Result<Vec<String>> {
    let (rows, _) = read_file(path)?;
    Ok(rows.iter().filter_map(|r| r.get(name)).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect())
}

/// The columns of a Parquet file written by `write_file` (its schema, and which text columns
/// hold JSON), so that a resumed run writes parts that join with the earlier ones.
pub fn read_columns(path: &Path) -> Result<Columns> {
    guarded(path, || read_columns_unguarded(path))
}

fn read_columns_unguarded(path: &Path) -> Result<Columns> {
    let f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(f).map_err(|e| Error::Corrupt { path: path.to_path_buf(), detail: format!("not a complete Parquet file: {e}") })?;
    let meta = reader.metadata().file_metadata();
    let json_cols: Vec<String> = meta
        .key_value_metadata()
        .and_then(|v| v.iter().find(|k| k.key == JSON_COLUMNS))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let root = meta.schema_descr().root_schema_ptr();
    let mut cols = Vec::new();
    for f in root.get_fields() {
        let name = f.name().to_string();
        let kind = if f.is_primitive() {
            match f.get_physical_type() {
                parquet::basic::Type::DOUBLE => Kind::Number,
                parquet::basic::Type::INT64 => Kind::Int,
                parquet::basic::Type::BOOLEAN => Kind::Bool,
                _ if json_cols.contains(&name) => Kind::Json,
                _ => Kind::Text,
            }
        } else {
            // LIST → repeated group list → element: a double, or another LIST.
            let element = f
                .get_fields()
                .first()
                .and_then(|l| l.get_fields().first())
                .ok_or_else(|| Error::Corrupt { path: path.to_path_buf(), detail: format!("column `{name}` is a group but not a LIST") })?;
            let (leaf, matrix) = if element.is_primitive() {
                (element.clone(), false)
            } else {
                let leaf = element
                    .get_fields()
                    .first()
                    .and_then(|l| l.get_fields().first())
                    .cloned()
                    .ok_or_else(|| Error::Corrupt { path: path.to_path_buf(), detail: format!("column `{name}` nests a group that is not a LIST") })?;
                (leaf, true)
            };
            let int = leaf.is_primitive() && leaf.get_physical_type() == parquet::basic::Type::INT64;
            match (matrix, int) {
                (false, false) => Kind::List,
                (true, false) => Kind::Matrix,
                (false, true) => Kind::IntList,
                (true, true) => Kind::IntMatrix,
            }
        };
        cols.push((name, kind));
    }
    Ok(Columns(cols))
}

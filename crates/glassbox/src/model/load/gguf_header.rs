//! A GGUF header reader that checks every count, length, size and offset against the file
//! before it allocates or seeks, and gives candle a `Content` it can read tensors from safely.
//!
//! candle's own `Content::read` trusts parts of a header: an alignment of 0 divides by zero,
//! tensor dimensions whose product wraps reach its dequantization, a repeated key or tensor
//! name silently replaces the first, and every metadata value costs 32 bytes of memory per
//! byte of file. Here:
//! - counts of entries, array elements and string bytes must fit in what is left of the file;
//! - metadata holds at most `MAX_METADATA_VALUES` values in all (a real vocabulary of 262 144
//!   tokens with scores and types is under a million);
//! - a key or tensor name may appear once;
//! - `general.alignment` is a power of two (or absent: 32);
//! - each tensor has 1 to 4 dimensions, each at least 1, a known type whose block divides its
//!   first dimension, an element count and byte size computed with checked arithmetic, an
//!   aligned offset, and bytes inside the file that no other tensor uses.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// The most metadata values (array elements included) a header may hold.
pub(crate) const MAX_METADATA_VALUES: u64 = 1 << 24;
/// The longest string (key, value or tensor name) in bytes.
const MAX_STRING_BYTES: u64 = 64 << 20;
/// Arrays nest at most this deep (GGUF files use one level).
const MAX_ARRAY_DEPTH: usize = 2;
/// The most elements of one tensor.
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// The largest alignment accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;
const DEFAULT_ALIGNMENT: u64 = 32;

/// The GGML tensor types glassbox reads (those candle dequantizes), by their GGUF code.
fn ggml_dtype(code: u32) -> Option<GgmlDType> {
    Some(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A name read from a file, shortened to 120 characters for messages (which escape its
/// control characters, `error::printable`).
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 120;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// What a read is for, for its error message; formatted only when one is needed (a header
/// holds hundreds of thousands of values).
#[derive(Clone, Copy)]
enum What<'a> {
    Text(&'a str),
    /// `"the value of `key`"`
    ValueOf(&'a str),
    /// `"{what} of `name`"`
    Of(&'a str, &'a str),
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Text(t) => f.write_str(t),
            What::ValueOf(k) => write!(f, "the value of `{}`", printable(k)),
            What::Of(w, n) => write!(f, "{w} of `{}`", printable(n)),
        }
    }
}

/// A reader that knows how many bytes of the file are left.
struct Cursor<R> {
    inner: R,
    pos: u64,
    size: u64,
    path: std::path::PathBuf,
    values: u64,
}

impl<R: Read> Cursor<R> {
    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt { path: self.path.clone(), detail }
    }
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }
    fn check_left(&self, n: u64, what: What) -> Result<()> {
        if n > self.left() {
            return Err(self.corrupt(format!("{what} needs {n} bytes at offset {}, but the file ends {} bytes later", self.pos, self.left())));
        }
        Ok(())
    }
    fn fill(&mut self, buf: &mut [u8], what: What) -> Result<()> {
        self.check_left(buf.len() as u64, what)?;
        self.inner
            .read_exact(buf)
            .map_err(|e| Error::Corrupt { path: self.path.clone(), detail: format!("reading {what}: {e}") })?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn bytes(&mut self, n: u64, what: What) -> Result<Vec<u8>> {
        self.check_left(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }
    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.fill(&mut a, what)?;
        Ok(a)
    }
    fn u32(&mut self, what: What) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: What) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A length or count: u32 in version 1, u64 after.
    fn length(&mut self, v1: bool, what: What) -> Result<u64> {
        if v1 {
            Ok(self.u32(what)? as u64)
        } else {
            self.u64(what)
        }
    }
    fn string(&mut self, v1: bool, what: What) -> Result<String> {
        let len = self.length(v1, what)?;
        if len > MAX_STRING_BYTES {
            return Err(self.corrupt(format!("{what} claims {len} bytes (at most {MAX_STRING_BYTES})")));
        }
        let mut b = self.bytes(len, what)?;
        // Files in the wild end some strings with NUL bytes; candle drops them too.
        while b.last() == Some(&0) {
            b.pop();
        }
        Ok(match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
    fn count_value(&mut self, n: u64) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(self.corrupt(format!("the metadata holds more than {MAX_METADATA_VALUES} values")));
        }
        Ok(())
    }
    /// One value of type `ty` (the caller has counted it).
    fn value(&mut self, v1: bool, ty: u32, depth: usize, key: &str) -> Result<Value> {
        let what = What::ValueOf(key);
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("{what} is a boolean stored as {b} (must be 0 or 1)"))),
            },
            8 => Value::String(self.string(v1, what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!("{what} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")));
                }
                let elem = self.u32(what)?;
                let n = self.length(v1, what)?;
                let min = min_value_bytes(elem, v1).ok_or_else(|| self.corrupt(format!("{what}: unknown element type {elem}")))?;
                if n.checked_mul(min).is_none_or(|b| b > self.left()) {
                    return Err(self.corrupt(format!("{what} claims {n} elements, more than the {} bytes left in the file hold", self.left())));
                }
                self.count_value(n)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(v1, elem, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.corrupt(format!("{what} has unknown type {other}"))),
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file, or `None` for an unknown type.
fn min_value_bytes(ty: u32, v1: bool) -> Option<u64> {
    let prefix = if v1 { 4 } else { 8 };
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => prefix,
        9 => 4 + prefix,
        _ => return None,
    })
}

/// Reads and checks the header of the GGUF file at `path` (see the module doc); the reader is
/// returned for `Content::tensor`, whose reads then stay inside the file.
pub(crate) fn read(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut c = Cursor { inner: BufReader::new(file), pos: 0, size, path: path.to_path_buf(), values: 0 };
    let magic = c.array::<4>(What::Text("the magic bytes"))?;
    if &magic != b"GGUF" {
        return Err(c.corrupt("it does not start with the bytes `GGUF`".into()));
    }
    let version = c.u32(What::Text("the version"))?;
    let (magic, v1) = match version {
        1 => (VersionedMagic::GgufV1, true),
        2 => (VersionedMagic::GgufV2, false),
        3 => (VersionedMagic::GgufV3, false),
        v => return Err(c.corrupt(format!("GGUF version {v} is not supported (1, 2 or 3)"))),
    };
    let n_tensors = c.length(v1, What::Text("the tensor count"))?;
    let n_kv = c.length(v1, What::Text("the metadata count"))?;
    let prefix = if v1 { 4 } else { 8 };
    let (min_kv, min_tensor) = (prefix + 4 + 1, prefix + 4 + 4 + 8);
    let needed = n_kv.checked_mul(min_kv).and_then(|a| n_tensors.checked_mul(min_tensor).and_then(|b| a.checked_add(b)));
    if needed.is_none_or(|n| n > c.left()) {
        return Err(c.corrupt(format!(
            "the header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file's {size} bytes can hold"
        )));
    }

    let mut metadata = HashMap::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = c.string(v1, What::Text("a metadata key"))?;
        let ty = c.u32(What::Text("a metadata type"))?;
        c.count_value(1)?;
        let value = c.value(v1, ty, 0, &key)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.corrupt(format!("the metadata key `{}` appears twice", printable(&key))));
        }
    }

    let mut tensor_infos: HashMap<String, TensorInfo> = HashMap::with_capacity(n_tensors as usize);
    let mut spans: Vec<(u64, u64, String)> = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string(v1, What::Text("a tensor name"))?;
        let shown = printable(&name);
        let n_dims = c.u32(What::Of("the dimension count", &name))?;
        if !(1..=4).contains(&n_dims) {
            return Err(c.corrupt(format!("tensor `{shown}` has {n_dims} dimensions (1 to 4)")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.length(v1, What::Of("a dimension", &name))?);
        }
        let code = c.u32(What::Of("the type", &name))?;
        let offset = c.u64(What::Of("the offset", &name))?;
        let dtype = ggml_dtype(code)
            .ok_or_else(|| c.corrupt(format!("tensor `{shown}` has GGML type {code}, which glassbox cannot read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K)")))?;
        let elements = ne.iter().try_fold(1u64, |a, &d| if d == 0 { None } else { a.checked_mul(d) });
        let elements = elements
            .filter(|&e| e <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| c.corrupt(format!("tensor `{shown}` has dimensions {ne:?}: each must be at least 1 and their product at most 2^40")))?;
        let block = dtype.block_size() as u64;
        if ne[0] % block != 0 {
            return Err(c.corrupt(format!("tensor `{shown}`: its rows of {} elements do not fill whole {dtype:?} blocks of {block}", ne[0])));
        }
        let bytes = elements / block * dtype.type_size() as u64;
        spans.push((offset, bytes, shown));
        // GGUF lists the fastest-varying dimension first; candle's shapes are row-major.
        let dims: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
        let info = TensorInfo { ggml_dtype: dtype, shape: candle_core::Shape::from(dims), offset };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(c.corrupt(format!("the tensor name `{}` appears twice", printable(&name))));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() && (*a as u64) <= MAX_ALIGNMENT => *a as u64,
        Some(other) => {
            return Err(c.corrupt(format!("`general.alignment` is {other:?}; it must be a u32 power of two up to {MAX_ALIGNMENT}")))
        }
    };
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let data_len = size.saturating_sub(data_start);
    spans.sort();
    let mut end_of_previous = 0u64;
    for (offset, bytes, shown) in &spans {
        if offset % alignment != 0 {
            return Err(c.corrupt(format!("tensor `{shown}` starts at offset {offset}, not a multiple of the alignment {alignment}")));
        }
        let end = offset.checked_add(*bytes).filter(|&e| e <= data_len).ok_or_else(|| {
            c.corrupt(format!("tensor `{shown}` needs {bytes} bytes at data offset {offset}, past the end of the file's {data_len} data bytes"))
        })?;
        if *offset < end_of_previous {
            return Err(c.corrupt(format!("tensor `{shown}` at data offset {offset} overlaps the tensor before it")));
        }
        end_of_previous = end;
    }
    let content = Content { magic, metadata, tensor_infos, tensor_data_offset: data_start };
    Ok((content, c.inner))
}

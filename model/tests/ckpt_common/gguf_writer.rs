//! Minimal GGUF writer for tests.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use weft_model::gguf::GgufValue;

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Encodes a value's payload; returns its GGUF type id.
pub fn put_value(out: &mut Vec<u8>, v: &GgufValue) -> u32 {
    use GgufValue as V;
    match v {
        V::U8(x) => (out.push(*x), 0).1,
        V::I8(x) => (out.extend(x.to_le_bytes()), 1).1,
        V::U16(x) => (out.extend(x.to_le_bytes()), 2).1,
        V::I16(x) => (out.extend(x.to_le_bytes()), 3).1,
        V::U32(x) => (out.extend(x.to_le_bytes()), 4).1,
        V::I32(x) => (out.extend(x.to_le_bytes()), 5).1,
        V::F32(x) => (out.extend(x.to_le_bytes()), 6).1,
        V::Bool(x) => (out.push(*x as u8), 7).1,
        V::String(s) => (put_str(out, s), 8).1,
        V::Array(items) => {
            let mut body = Vec::new();
            let mut elem = 4; // empty arrays: u32
            for it in items {
                elem = put_value(&mut body, it);
            }
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            out.extend(body);
            9
        }
        V::U64(x) => (out.extend(x.to_le_bytes()), 10).1,
        V::I64(x) => (out.extend(x.to_le_bytes()), 11).1,
        V::F64(x) => (out.extend(x.to_le_bytes()), 12).1,
    }
}

pub struct Builder {
    pub version: u32,
    pub alignment: u64,
    pub kv: Vec<(String, GgufValue)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Builder {
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }
    pub fn kv(&mut self, k: &str, v: GgufValue) -> &mut Self {
        self.kv.push((k.to_string(), v));
        self
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), type_id, data));
        self
    }
    pub fn build(&self) -> Vec<u8> {
        let al = self.alignment as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            let mut body = Vec::new();
            let t = put_value(&mut body, v);
            out.extend(t.to_le_bytes());
            out.extend(body);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, t, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(al) * al;
        }
        out.resize(out.len().div_ceil(al) * al, 0);
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off, 0);
            out.extend(data);
        }
        out
    }
}

pub fn rand_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub fn s(x: &str) -> GgufValue {
    GgufValue::String(x.into())
}

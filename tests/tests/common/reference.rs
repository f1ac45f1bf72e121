//! An independent float64 llama / Qwen2 forward pass over a Hugging Face
//! safetensors checkpoint, written plainly from the published architecture
//! (no weft code involved): full recompute, no cache, no sharding.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

pub struct RefModel {
    cfg: Value,
    w: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

fn to_f64(view: &safetensors::tensor::TensorView<'_>) -> Vec<f64> {
    use safetensors::Dtype;
    let b = view.data();
    match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        d => panic!("unsupported dtype {d:?}"),
    }
}

impl RefModel {
    pub fn load(dir: &Path) -> RefModel {
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json")).expect("config"),
        )
        .expect("json");
        let mut w = HashMap::new();
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                let bytes = std::fs::read(&p).expect("read");
                let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
                for (name, view) in st.tensors() {
                    w.insert(name, (view.shape().to_vec(), to_f64(&view)));
                }
            }
        }
        RefModel { cfg, w }
    }

    fn c(&self, k: &str) -> usize {
        self.cfg[k].as_u64().unwrap_or_else(|| panic!("config {k}")) as usize
    }

    fn t(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.w.get(name).unwrap_or_else(|| panic!("tensor {name}"))
    }

    /// y = W x (+ b), W is [out, in].
    fn linear(&self, name: &str, x: &[f64], bias: bool) -> Vec<f64> {
        let (shape, w) = self.t(&format!("{name}.weight"));
        let (out, inp) = (shape[0], shape[1]);
        let mut y: Vec<f64> = (0..out)
            .map(|r| (0..inp).map(|c| w[r * inp + c] * x[c]).sum())
            .collect();
        if bias {
            let (_, b) = self.t(&format!("{name}.bias"));
            y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        y
    }

    fn rms(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let eps = self.cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6);
        let (_, g) = self.t(name);
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v * s * g).collect()
    }

    /// Llama 3.1 "llama3" frequency scaling, per the transformers formula.
    fn inv_freq(&self, hd: usize) -> Vec<f64> {
        let theta = self.cfg["rope_theta"].as_f64().unwrap_or(10000.0);
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let sc = &self.cfg["rope_scaling"];
        if sc.is_null() {
            return base;
        }
        let f = sc["factor"].as_f64().expect("factor");
        let lo = sc["low_freq_factor"].as_f64().expect("low");
        let hi = sc["high_freq_factor"].as_f64().expect("high");
        let old = sc["original_max_position_embeddings"]
            .as_f64()
            .expect("orig");
        let (lo_wl, hi_wl) = (old / lo, old / hi);
        base.iter()
            .map(|&fr| {
                let wl = 2.0 * std::f64::consts::PI / fr;
                if wl < hi_wl {
                    fr
                } else if wl > lo_wl {
                    fr / f
                } else {
                    let s = (old / wl - lo) / (hi - lo);
                    (1.0 - s) * fr / f + s * fr
                }
            })
            .collect()
    }

    /// rotate_half rope (pairs i, i + d/2) on one head vector.
    fn rope(v: &mut [f64], pos: usize, inv: &[f64]) {
        let h = v.len() / 2;
        for i in 0..h {
            let a = pos as f64 * inv[i];
            let (s, c) = a.sin_cos();
            let (x, y) = (v[i], v[i + h]);
            v[i] = x * c - y * s;
            v[i + h] = x * s + y * c;
        }
    }

    /// Logits of the last position of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<f64> {
        let (hdim, nh, nkv) = (
            self.c("hidden_size"),
            self.c("num_attention_heads"),
            self.c("num_key_value_heads"),
        );
        let hd = hdim / nh;
        let bias = self.cfg["model_type"] == "qwen2";
        let inv = self.inv_freq(hd);
        let (eshape, emb) = self.t("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * eshape[1]..(t as usize + 1) * eshape[1]].to_vec())
            .collect();
        for l in 0..self.c("num_hidden_layers") {
            let p = format!("model.layers.{l}");
            let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
            for (pos, x) in xs.iter().enumerate() {
                let h = self.rms(&format!("{p}.input_layernorm.weight"), x);
                let mut q = self.linear(&format!("{p}.self_attn.q_proj"), &h, bias);
                let mut k = self.linear(&format!("{p}.self_attn.k_proj"), &h, bias);
                q.chunks_mut(hd).for_each(|c| Self::rope(c, pos, &inv));
                k.chunks_mut(hd).for_each(|c| Self::rope(c, pos, &inv));
                qs.push(q);
                ks.push(k);
                vs.push(self.linear(&format!("{p}.self_attn.v_proj"), &h, bias));
            }
            for (i, x) in xs.iter_mut().enumerate() {
                let mut att = vec![0f64; nh * hd];
                for head in 0..nh {
                    let kvh = head / (nh / nkv);
                    let q = &qs[i][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            q.iter()
                                .zip(&ks[j][kvh * hd..(kvh + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for d in 0..hd {
                            att[head * hd + d] += ej / z * vs[j][kvh * hd + d];
                        }
                    }
                }
                let o = self.linear(&format!("{p}.self_attn.o_proj"), &att, false);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = self.rms(&format!("{p}.post_attention_layernorm.weight"), x);
                let g = self.linear(&format!("{p}.mlp.gate_proj"), &h, false);
                let u = self.linear(&format!("{p}.mlp.up_proj"), &h, false);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = self.linear(&format!("{p}.mlp.down_proj"), &a, false);
                x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            }
        }
        let last = self.rms("model.norm.weight", xs.last().expect("tokens"));
        let head = if self.w.contains_key("lm_head.weight") {
            "lm_head"
        } else {
            "model.embed_tokens"
        };
        self.linear(head, &last, false)
    }
}

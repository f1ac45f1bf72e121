"""The CUDA C of weft's kernels compiles, without a GPU: every NVRTC program of
kernels/src/cuda (the raw strings the Rust code concatenates, in the same
order) goes through NVRTC from the pinned `nvidia-cuda-nvrtc` wheel for the
architectures weft serves (sm_80 A100, sm_90 H100/H200) and an older one
(sm_75, where the tensor-core kernels compile to nothing and are never
launched). The CUDA CI machine has no GPU, so this is where a kernel that
does not compile is caught, before a GPU session is spent on it."""

from __future__ import annotations

import ctypes
import pathlib
import re

import pytest

import weftlib

CUDA_SRC = weftlib.REPO_ROOT / "kernels" / "src" / "cuda"


def nvrtc() -> ctypes.CDLL:
    import nvidia  # the namespace package the wheel installs into

    for root in nvidia.__path__:
        libs = sorted(pathlib.Path(root).glob("**/lib/libnvrtc.so.*"))
        libs = [p for p in libs if "builtins" not in p.name]
        if libs:
            return ctypes.CDLL(str(libs[0]))
    pytest.fail("libnvrtc not found in the nvidia-cuda-nvrtc wheel")


def raw_string(file: str, name: str) -> str:
    text = (CUDA_SRC / file).read_text()
    m = re.search(r"pub\(crate\) const " + name + r': &str = r#"(.*?)"#;', text, re.S)
    assert m, f"{name} not found in {file}"
    return m.group(1)


def programs() -> dict[str, tuple[str, list[str]]]:
    """name -> (source, kernel names), parsed from source.rs's PROGRAMS."""
    text = (CUDA_SRC / "source.rs").read_text()
    names = dict(re.findall(r'pub const (\w+): &str = "(\w+)";', text))
    parts = {
        "COMMON": raw_string("source.rs", "COMMON"),
        "ELEMENTWISE": raw_string("source.rs", "ELEMENTWISE"),
        "SAMPLING": raw_string("source_sampling.rs", "SAMPLING"),
        "ATTENTION": raw_string("source_attn.rs", "ATTENTION"),
        "FLASH": raw_string("source_flash.rs", "FLASH"),
    }
    block = text[text.index("pub(crate) const PROGRAMS") :]
    out = {}
    for m in re.finditer(
        r'name: "(\w+)",\s*parts: &\[(.*?)\],\s*functions: &\[(.*?)\],', block, re.S
    ):
        listed = re.sub(r"super::\w+::", "", m.group(2))
        part_names = re.findall(r"(\w+),?\s*", listed)
        src = "".join(parts[p] for p in part_names)
        kernels = [names[n] for n in re.findall(r"names::(\w+)", m.group(3))]
        out[m.group(1)] = (src, kernels)
    assert set(out) == {"weft_elementwise", "weft_sampling", "weft_attention"}, out.keys()
    return out


PROGRAMS = programs()


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_program_compiles(program: str, arch: str) -> None:
    lib = nvrtc()
    src, kernels = PROGRAMS[program]
    prog = ctypes.c_void_p()
    created = lib.nvrtcCreateProgram(
        ctypes.byref(prog), src.encode(), program.encode(), 0, None, None
    )
    assert created == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"-Xptxas=-v"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, f"{program} for {arch} does not compile:\n{text}"
    # Every kernel the Rust side loads by name is in the compiled image.
    for k in kernels:
        assert f"Compiling entry function '{k}'" in text, f"{k} missing from {program}:\n{text}"

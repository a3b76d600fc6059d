"""A Hugging Face causal LM directory written as one GGUF file for llama.cpp, by llama.cpp's own converter.

The converter (`convert_hf_to_gguf.py` with its `conversion` package and `gguf-py`) is the one llama-cpp-python
vendors, so that the file matches the llama.cpp that reads it here: taken once from that package's source
distribution on PyPI into ~/.cache/distill, or from a llama.cpp checkout named by DISTILL_LLAMA_CPP.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

from distill.errors import DistillError

# llama-cpp-python's version whose converter is used when none is installed (the Makefile's llama.cpp builds)
DEFAULT_VERSION = "0.3.36"
OutType = Literal["f32", "f16", "bf16", "q8_0"]
PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")  # what the converter needs of a llama.cpp tree


def converter_dir() -> Path:
    """A directory holding llama.cpp's converter: DISTILL_LLAMA_CPP, or the cached copy (fetched on first use)."""
    named = os.environ.get("DISTILL_LLAMA_CPP")
    if named:
        if not (Path(named) / PARTS[0]).is_file():
            raise DistillError(f"DISTILL_LLAMA_CPP={named} holds no {PARTS[0]}: name a llama.cpp checkout")
        return Path(named)
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = DEFAULT_VERSION
    cached = Path.home() / ".cache" / "distill" / f"llama.cpp-{version}"
    if not (cached / PARTS[0]).is_file():
        _fetch(version, cached)
    return cached


def _fetch(version: str, into: Path) -> None:
    """The converter's parts out of llama-cpp-python's source distribution, placed whole or not at all."""
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent) as d:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", d]
        got = subprocess.run([*pip, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        sdists = list(Path(d).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode or not sdists:
            last = (got.stderr.strip().splitlines() or ["no source distribution"])[-1]
            raise DistillError(
                f"could not fetch llama.cpp's converter (llama-cpp-python {version} from PyPI: {last}); "
                "set DISTILL_LLAMA_CPP to a llama.cpp checkout"
            )
        prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        staged = Path(d) / "tree"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and _wanted(m.name[len(prefix) :])]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(staged, members=members, filter="data")
        shutil.rmtree(into, ignore_errors=True)
        staged.rename(into)


def _wanted(rel: str) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in PARTS)


def export_gguf(hf_dir: Path, out: Path, outtype: OutType = "f16") -> Path:
    """`hf_dir` (a causal LM with its tokenizer, as `save_hf` writes it) as the GGUF file `out`, weights stored as
    `outtype`; written beside `out` and renamed, so the file appears whole or not at all."""
    if importlib.util.find_spec("sentencepiece") is None:  # the converter imports it for Llama vocabularies
        raise DistillError("GGUF export needs sentencepiece: pip install 'distill[gguf]' (or sentencepiece)")
    script = converter_dir() / PARTS[0]
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tmp.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DistillError(f"llama.cpp's converter could not write {hf_dir} as GGUF: {last}")
    os.replace(tmp, out)
    return out

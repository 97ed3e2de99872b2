"""The ONNX Runtime backend: the same sentence-transformers model, exported once.

On the CPU, ONNX Runtime embeds one short query faster than torch and batches
at least as fast, with embeddings equal to torch's within 1e-6
(bench/results/embedder.md). So it is the default.

The graph is exported from the sentence-transformers model itself (its
transformer, pooling and normalisation in one graph, whatever pooling the model
declares) and cached under ``EMBEDDER_ONNX_CACHE_DIR``, keyed by the model's
files, so only the first start exports; the Docker image exports at build time.
The export is the only step that imports torch. Serving needs onnxruntime and
the model's own fast tokenizer (``tokenizers``), whose truncation is set to the
model's ``max_seq_length`` exactly as sentence-transformers does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embedder.model import Encoded, resolve_model_path

# Bump when the exported graph changes, so caches of older exports are not reused.
EXPORT_VERSION = 1
_OPSET = 17
_MANIFEST = "manifest.json"
INT8_FILE = "model_int8.onnx"


def cache_key(model_path: Path) -> str:
    """Names, sizes and modification times of the model's files, plus the export version."""
    digest = hashlib.sha256(f"v{EXPORT_VERSION}".encode())
    for file in sorted(p for p in model_path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(model_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def export_dir(model: str, cache_dir: Path) -> Path:
    path = Path(resolve_model_path(model))
    if not path.is_dir():
        raise ValueError(
            f"the onnx backend needs the model as a local folder; {model!r} is not one "
            "(use EMBEDDER_BACKEND=torch for hub names)"
        )
    return cache_dir.expanduser() / f"{path.name}-{cache_key(path)}"


def export(model: str, target: Path) -> None:
    """Export ``model`` to ``target``/model.onnx with its tokenizer and a manifest.

    Written to a temporary folder and renamed into place, so a concurrent start
    or a crash never leaves a half-written export behind.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_model_path(model), device="cpu").eval()
    features = st.preprocess(["an example sentence"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st  # a submodule, so its weights export as initializers

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            out = self.st(dict(zip(names, tensors, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2.0, dim=1)

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            Embed().eval(), tuple(features[n] for n in names), str(scratch / "model.onnx"),
            input_names=names, output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=_OPSET, dynamo=False,
        )  # fmt: skip
    st.tokenizer.backend_tokenizer.save(str(scratch / "tokenizer.json"))
    manifest = {
        "inputs": names,
        "max_seq_length": st.max_seq_length,
        "dimension": st.get_embedding_dimension(),
        "pad_id": st.tokenizer.pad_token_id or 0,
    }
    (scratch / _MANIFEST).write_text(json.dumps(manifest))
    try:
        os.replace(scratch, target)
    except OSError:  # another process exported it first: theirs is as good
        for file in scratch.iterdir():
            file.unlink()
        scratch.rmdir()


class OnnxEncoder:
    def __init__(
        self,
        folder: Path,
        name: str,
        batch_size: int,
        threads: int | None,
        model_file: str = "model.onnx",
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        manifest = json.loads((folder / _MANIFEST).read_text())
        self.name = name
        self.dimension = int(manifest["dimension"])
        self._inputs: list[str] = manifest["inputs"]
        self._pad_id = int(manifest["pad_id"])
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(int(manifest["max_seq_length"]))
        self._tokenizer.no_padding()  # each chunk is padded to its own longest text
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(
            str(folder / model_file), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: list[str]) -> Encoded:
        encodings = self._tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        # Like sentence-transformers: sort by length so each chunk pads little.
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            vectors[chunk] = self._run([encodings[i] for i in chunk])
        return Encoded(vectors, lengths)

    def _run(self, encodings: list[Any]) -> npt.NDArray[np.float32]:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (out,) = self._session.run(None, {name: feeds[name] for name in self._inputs})
        return np.asarray(out, dtype=np.float32)


def quantize(folder: Path) -> None:
    """``model_int8.onnx`` beside ``model.onnx``: weights of the matrix products in int8.

    Dynamic quantisation (activations scaled per batch at run time) needs no
    calibration data. Only the matrix products, one scale per output channel:
    with one scale per tensor, and the embedding table quantised too (the
    tool's defaults), vectors drifted much further from the fp32 ones at the
    same speed (this way's cosine to them: bench/results/index_study.md).
    Written under a temporary name and renamed into place.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    scratch = folder / f".{INT8_FILE}.{os.getpid()}"
    quantize_dynamic(
        folder / "model.onnx",
        scratch,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    os.replace(scratch, folder / INT8_FILE)


def load_onnx(
    model: str,
    cache_dir: Path,
    batch_size: int,
    threads: int | None = None,
    weights: str = "fp32",
) -> OnnxEncoder:
    folder = export_dir(model, cache_dir)
    if not (folder / _MANIFEST).exists():
        export(model, folder)
    model_file = "model.onnx"
    if weights == "int8":
        model_file = INT8_FILE
        if not (folder / model_file).exists():
            quantize(folder)
    return OnnxEncoder(folder, Path(model).name, batch_size, threads, model_file)

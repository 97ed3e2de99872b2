"""One copy of the model in the CPU embedder image: the ONNX file the service loads.

The export stage leaves three copies behind: the weights package's own weights
(which the export reads), the fp32 ONNX export and its int8 quantisation. Serving
reads only one ONNX file, plus the export's tokenizer and manifest. Two steps,
each run in the build stage that owns the files, so no layer of the image holds
what it drops:

  python ship_model.py drop-weights MODEL_DIR
      In the serving virtualenv: delete the weight files of the model folder the
      weights package installs. Its small files (configs, tokenizer) stay: they
      name the model, and the export is keyed by the folder's files.
  python ship_model.py place-export EXPORTED CACHE_DIR WEIGHTS
      EXPORTED holds the one export the export stage made; move it to where the
      service will look for it (``embedder.onnx_model.export_dir``, computed from
      the weights-less folder as the image ships it) and keep only the ONNX file
      that ``WEIGHTS`` (``EMBEDDER_ONNX_WEIGHTS``: int8 or fp32) loads.

The image's build then loads the encoder exactly as the service does: a key that
did not match would make the service export again, which needs torch, and the
build fails there.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# What a Hugging Face model folder holds its tensors in (safetensors, PyTorch,
# TensorFlow, Flax, rust-bert, ONNX), and the folders of its ONNX/OpenVINO copies.
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".ot", ".onnx",
)  # fmt: skip
WEIGHT_DIRS = ("onnx", "openvino")
ONNX_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}


def drop_weights(model_dir: Path) -> list[Path]:
    """Delete the weight files under ``model_dir``; return what was deleted."""
    if not model_dir.is_dir():
        raise SystemExit(f"not a model folder: {model_dir}")
    dropped = [
        p
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
        and (p.suffix in WEIGHT_SUFFIXES or p.relative_to(model_dir).parts[0] in WEIGHT_DIRS)
    ]
    for path in dropped:
        path.unlink()
    for name in WEIGHT_DIRS:
        shutil.rmtree(model_dir / name, ignore_errors=True)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in dropped):
        raise SystemExit(f"no weight files under {model_dir}: is it the model folder?")
    return dropped


def place_export(exported: Path, target: Path, weights: str) -> Path:
    """Move the single export under ``exported`` to ``target``, keeping only the
    manifest, the tokenizer and the ONNX file ``weights`` names."""
    if weights not in ONNX_FILES:
        raise SystemExit(f"EMBEDDER_ONNX_WEIGHTS must be one of {sorted(ONNX_FILES)}: {weights!r}")
    exports = [p for p in exported.iterdir() if p.is_dir()]
    if len(exports) != 1:
        raise SystemExit(f"expected one export under {exported}, found {exports}")
    source = exports[0]
    keep = {"manifest.json", "tokenizer.json", ONNX_FILES[weights]}
    missing = keep - {p.name for p in source.iterdir()}
    if missing:
        raise SystemExit(f"the export {source} lacks {sorted(missing)}")
    for path in source.iterdir():
        if path.name not in keep:
            path.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return target


def main(argv: list[str]) -> None:
    match argv:
        case ["drop-weights", model_dir]:
            for path in drop_weights(Path(model_dir)):
                print(f"dropped {path}")
        case ["place-export", exported, cache_dir, weights]:
            # The service's own rule for where the export of its model lives.
            from embedder.onnx_model import export_dir
            from embedder.settings import EmbedderSettings

            target = export_dir(EmbedderSettings().model, Path(cache_dir))
            print(f"export: {place_export(Path(exported), target, weights)}")
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

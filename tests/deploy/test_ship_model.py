"""docker/ship_model.py: the CPU embedder image ships one copy of the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deploy_files import load_tool

ship = load_tool("ship_model", "docker")


def model_folder(root: Path) -> Path:
    """A sentence-transformers folder as the weights package installs it."""
    model = root / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "onnx").mkdir()
    for name in ("config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        (model / name).write_text("{}")
    for name in ("model.safetensors", "pytorch_model.bin", "onnx/model.onnx"):
        (model / name).write_bytes(b"\0" * 1024)
    return model


def export(root: Path, name: str = "model-0123") -> Path:
    folder = root / "exported" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"dimension": 4}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"fp32")
    (folder / "model_int8.onnx").write_bytes(b"int8")
    return folder.parent


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_drop_weights_keeps_what_names_the_model(tmp_path: Path) -> None:
    model = model_folder(tmp_path)
    dropped = ship.drop_weights(model)
    assert {p.name for p in dropped} == {"model.safetensors", "pytorch_model.bin", "model.onnx"}
    kept = {"config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"}
    assert files(model) == kept
    assert not (model / "onnx").exists()


def test_drop_weights_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    # A wrong path (or a package that changed its layout) must fail the build, not ship
    # the weights unnoticed.
    model = model_folder(tmp_path)
    ship.drop_weights(model)
    with pytest.raises(SystemExit, match="no weight files"):
        ship.drop_weights(model)
    with pytest.raises(SystemExit, match="not a model folder"):
        ship.drop_weights(tmp_path / "missing")


@pytest.mark.parametrize(("weights", "kept"), [("int8", "model_int8.onnx"), ("fp32", "model.onnx")])
def test_place_export_keeps_only_the_onnx_file_the_service_loads(
    tmp_path: Path, weights: str, kept: str
) -> None:
    target = tmp_path / "cache" / "model-abcd"
    ship.place_export(export(tmp_path), target, weights)
    assert files(target) == {"manifest.json", "tokenizer.json", kept}
    assert (target / kept).read_bytes() == weights.encode()


def test_place_export_refuses_what_it_cannot_ship(tmp_path: Path) -> None:
    exported = export(tmp_path)
    with pytest.raises(SystemExit, match="EMBEDDER_ONNX_WEIGHTS"):
        ship.place_export(exported, tmp_path / "t", "fp16")
    (exported / "model-0123" / "model_int8.onnx").unlink()
    with pytest.raises(SystemExit, match="lacks"):
        ship.place_export(exported, tmp_path / "t", "int8")
    (exported / "another").mkdir()
    with pytest.raises(SystemExit, match="expected one export"):
        ship.place_export(exported, tmp_path / "t", "fp32")


def test_the_export_lands_where_the_service_looks_for_the_weightless_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedder.onnx_model import export_dir

    model = model_folder(tmp_path)
    before = export_dir(str(model), tmp_path / "cache")
    ship.drop_weights(model)
    monkeypatch.setenv("EMBEDDER_MODEL", str(model))
    ship.main(["place-export", str(export(tmp_path)), str(tmp_path / "cache"), "int8"])
    # The key follows the folder as the image ships it, not as the export stage saw it.
    folder = export_dir(str(model), tmp_path / "cache")
    assert folder != before and (folder / "manifest.json").exists()
    assert (folder / "model_int8.onnx").exists() and not (folder / "model.onnx").exists()

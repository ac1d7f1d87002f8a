"""``medref export``: the TorchScript / ONNX file plus its JSON sidecar give ``medref predict``'s probabilities.

    .venv/bin/python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_src import cli
from pipeline_src.inference.predict import load_image, to_model_size
from pipeline_src.inference.predictor import load_predictor
from tests.test_predict import trained  # noqa: F401  (the module's trained tiny models)

# three images: the export traced a batch of two, the batch axis must stay dynamic
TEXTS = ["Unilateral pulmonary infection, one infected area, upper left lung.",
         "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.",
         "Unilateral pulmonary infection, one infected area, lower right lung."]


def _inputs(tmp_path, meta):
    """Two new images preprocessed the way the sidecar says, from files of other sizes and depths."""
    from pipeline_src.data.imageio import IntensityRule

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((90, 70)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 65535, (50, 64), dtype=np.uint16)).save(tmp_path / "b.tif")
    inp = meta["input"]
    rule = IntensityRule(inp["intensity"]["rule"], tuple(inp["intensity"]["percentiles"]))
    imgs = [to_model_size(load_image(tmp_path / n, rule), inp["image_size"]) for n in ("a.png", "b.tif")]
    imgs.append(imgs[0][:, ::-1])
    return torch.from_numpy(np.stack(imgs).astype(np.float32)[:, None] / 255.0)


def _tokens(meta):
    import open_clip

    assert meta["text"]["tokenizer"].startswith("open_clip.tokenizer.SimpleTokenizer")
    return open_clip.tokenizer.SimpleTokenizer(context_length=meta["text"]["context_length"])(TEXTS)


@pytest.mark.parametrize("method", ["supervised", "image_only"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_matches_predict_within_1e4(fmt, method, trained, tmp_path):  # noqa: F811
    model_dir = trained[method]
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert cli.main(["export", str(model_dir), "--format", fmt, "--out", str(out)]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["input"]["image_size"] == 64 and meta["threshold"] == 0.5 and (meta["text"] is None) == (
        method == "image_only")
    x = _inputs(tmp_path, meta)
    want = load_predictor(model_dir).predict(x, TEXTS).numpy()
    feeds = [x] + ([_tokens(meta)] if meta["text"] else [])
    if fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(out))(*feeds).numpy()
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        got = sess.run(["probs"], {n: f.numpy() for n, f in zip(names, feeds, strict=True)})[0]
    assert got.shape == want.shape == (3, 1, 64, 64)
    assert float(np.abs(got - want).max()) <= 1e-4
    assert meta["model_sha256"] == load_predictor(model_dir).sha256


def test_export_refuses_a_missing_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert cli.main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "neither a model folder nor a regime" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

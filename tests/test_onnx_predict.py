"""``medref predict`` with the onnxruntime engine on a folder's ONNX export: the torch engine's masks and
probabilities (<= 1e-4), no torch imported, the engine choice, and the tokenizer against open_clip's (issue 25).

    .venv/bin/python -m pytest -q tests/test_onnx_predict.py
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline_src import cli
from pipeline_src.inference import predict as P
from pipeline_src.inference.sidecar import seal
from tests.pipeline_utils import env
from tests.test_predict import _write_val_pngs, trained  # noqa: F401  (the module's trained tiny models)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):  # noqa: F811
    """Copies of the two tiny model folders, each with model.onnx + model.onnx.json written into it."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for method in ("supervised", "image_only"):
        d = root / method
        shutil.copytree(trained[method], d)
        assert cli.main(["export", str(d), "--format", "onnx", "--out", str(d / "model.onnx")]) == 0
        out[method] = d
    ids, texts = _write_val_pngs(trained["data"], root / "images" / "val")
    out["images"], out["texts"] = root / "images" / "val", texts
    return out


def _masks(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "masks").iterdir())}


@pytest.mark.parametrize("method", ["supervised", "image_only"])
def test_onnx_engine_gives_the_torch_masks_and_probabilities(method, exported, tmp_path):
    d = exported[method]
    common = dict(texts_file=exported["texts"], probs=True, progress=False)
    t = P.run(str(d), [str(exported["images"])], tmp_path / "torch", engine="torch", **common)
    o = P.run(str(d), [str(exported["images"])], tmp_path / "onnx", **common)  # auto: the folder has an export
    assert (t["engine"], o["engine"]) == ("torch", "onnx") and t["model_sha256"] == o["model_sha256"]
    mt, mo = _masks(tmp_path / "torch"), _masks(tmp_path / "onnx")
    assert len(mt) >= 4 and mt.keys() == mo.keys()
    for k in mt:
        assert np.array_equal(mt[k], mo[k]), f"{k}: the engines' masks differ"
    for p in (tmp_path / "torch" / "probs").iterdir():
        a = np.asarray(Image.open(p), np.float64) / 65535
        b = np.asarray(Image.open(tmp_path / "onnx" / "probs" / p.name), np.float64) / 65535
        assert np.abs(a - b).max() <= 1e-4 + 1 / 65535  # export parity, plus the 16-bit PNG's rounding
    rows = [list(csv.DictReader(open(tmp_path / e / "predictions.csv"))) for e in ("torch", "onnx")]
    assert [r["regions"] for r in rows[0]] == [r["regions"] for r in rows[1]]


def test_onnx_predict_imports_no_torch(exported, tmp_path):
    img = sorted(exported["images"].iterdir())[0]
    code = ("import sys\nfrom pipeline_src.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "predict", str(exported["supervised"]), "--images", str(img),
                        "--text", "Unilateral pulmonary infection, one infected area, upper left lung.", "--out",
                        str(tmp_path / "p"), "--tta", "flip"], capture_output=True, text=True, env=env(), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "p" / "predict.json").read_text())["engine"] == "onnx"


def test_engine_choice_and_stale_export(trained, exported, tmp_path, capsys):  # noqa: F811
    img = str(sorted(exported["images"].iterdir())[0])
    text = "Unilateral pulmonary infection, one infected area, upper left lung."
    # --engine onnx on a folder without an export: one clear error, nothing written
    assert cli.main(["predict", str(trained["supervised"]), "--images", img, "--text", text, "--out",
                     str(tmp_path / "a"), "--engine", "onnx"]) == 2
    assert "has no model.onnx" in capsys.readouterr().err and not (tmp_path / "a").exists()
    # an export of another model.pt: auto says so and predicts with torch; --engine onnx refuses
    d = tmp_path / "stale"
    shutil.copytree(exported["supervised"], d)
    side = d / "model.onnx.json"
    meta = json.loads(side.read_text())
    pristine = side.read_text()
    # as an export of another model.pt is sealed (the model.pt was retrained after the export)
    side.write_text(json.dumps(seal({**meta, "model_sha256": "0" * 64}, meta["file_sha256"])))
    assert P.run(str(d), [img], tmp_path / "b", text=text, progress=False)["engine"] == "torch"
    assert "exported from another model.pt" in capsys.readouterr().err
    assert cli.main(["predict", str(d), "--images", img, "--text", text, "--out", str(tmp_path / "c"),
                     "--engine", "onnx"]) == 2
    assert "exported from another model.pt" in capsys.readouterr().err
    # a sidecar edited by hand (its seal broken) is refused by either engine choice, not silently skipped
    side.write_text(json.dumps({**json.loads(pristine), "threshold": 0.9}))
    for engine in ("auto", "onnx"):
        assert cli.main(["predict", str(d), "--images", img, "--text", text, "--out", str(tmp_path / f"e{engine}"),
                         "--engine", engine]) == 2
        assert "edited after export" in capsys.readouterr().err and not (tmp_path / f"e{engine}").exists()


def test_clip_tokenizer_equals_open_clips(shared_data):
    """The tokenizers-library BPE gives SimpleTokenizer's ids: the real QaTa / MosMed report texts and noisy ones."""
    from pipeline_src.inference.onnx_engine import clip_tokenizer
    from pipeline_src.models.text import _simple_tokenizer

    texts = ["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
             "oneinfected  area, midlle left lung..", "Caf\u00e9 &amp; na\u00efve 12,5 mm\u2019s \u00c5", "", " \t\n",
             "x" * 400]
    for f in sorted(shared_data.rglob("*.csv")):
        with open(f, encoding="utf-8", errors="replace") as fh:
            texts += [row[1] for row in csv.reader(fh) if len(row) > 1]
    assert len(texts) > 1000
    for length in (24, 77):
        assert np.array_equal(clip_tokenizer(length)(texts), _simple_tokenizer(length)(texts).numpy())


def test_exported_onnx_file_predicts_without_torch(exported, tmp_path):
    """`medref predict <file>.onnx`: the way to the torch-free engine for a pipeline model (models/<regime>/ is
    train's DVC output, so its export goes elsewhere): no torch imported, and the torch engine's masks."""
    d = exported["supervised"]
    out_file = tmp_path / "exports" / "qata.onnx"
    out_file.parent.mkdir()
    assert cli.main(["export", str(d), "--format", "onnx", "--out", str(out_file)]) == 0
    img = sorted(exported["images"].iterdir())[0]
    text = "Unilateral pulmonary infection, one infected area, upper left lung."
    code = ("import sys\nfrom pipeline_src.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "predict", str(out_file), "--images", str(img), "--text", text,
                        "--out", str(tmp_path / "o"), "--tta", "flip"], capture_output=True, text=True, env=env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "o" / "predict.json").read_text())["engine"] == "onnx"
    P.run(str(d), [str(img)], tmp_path / "t", text=text, tta="flip", engine="torch", progress=False)
    mt, mo = _masks(tmp_path / "t"), _masks(tmp_path / "o")
    assert mt.keys() == mo.keys() and all(np.array_equal(mt[k], mo[k]) for k in mt)

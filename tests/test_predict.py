"""``medref predict`` on tiny trained models: eval's masks bit for bit, outputs, texts, TTA, bad inputs, model card.

    .venv/bin/python -m pytest -q tests/test_predict.py
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_src import cli
from pipeline_src.data.dataset import ShardDataset
from pipeline_src.errors import MedrefError
from pipeline_src.evaluate import evaluate as E
from pipeline_src.inference import predict as P
from pipeline_src.inference.predictor import load_predictor
from pipeline_src.labels.mask_regions import mask_to_regions
from pipeline_src.labels.text_parser import flip_text
from pipeline_src.params import Params, load_raw
from pipeline_src.train.train import run as train_run
from tests.train_fixtures import make_dataset

SMALL_MODEL = {"image_encoder": "resnet10t", "text_width": 16, "text_layers": 1, "text_heads": 2,
               "context_length": 24, "embed_dim": 16, "decoder_dim": 16, "decoder_heads": 2}


def _params(repo_root: Path, method: str) -> Params:
    raw = load_raw(repo_root / "params.yaml")
    cfg = {"model": SMALL_MODEL, "epochs": 1, "max_steps": 3, "batch_size": 6, "unlabelled_batch_size": 6,
           "val_max": 4, "ssl": {"burn_in_epochs": 0.25, "ramp_epochs": 0.5, "confidence": 0.5}}
    raw["regimes"]["tiny"] = {"dataset": next(iter(raw["datasets"])), "fraction": 0.25, "method": method, "train": cfg}
    raw["eval"] = {**raw.get("eval", {}), "batch_size": 4}
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    """A text-guided and an image-only model trained 3 steps on the tiny synthetic shards."""
    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(root / "data")
    out = {"data": data, "root": root}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDREF_PROGRESS", "0")
        for method in ("supervised", "image_only"):
            params = _params(repo_root, method)
            out[method] = train_run(params, "tiny", data["shards_dir"], data["labels_file"], data["split_file"],
                                    root / method / "model", root / method / "run")
            out[f"{method}_params"] = params
    return out


def _write_val_pngs(data: dict, folder: Path) -> tuple[list[str], Path]:
    """The val split's images as PNG files, and their texts as an LViT-style CSV keyed by mask_<image name>."""
    ds = ShardDataset(data["shards_dir"], "val")
    folder.mkdir(parents=True)
    ids = []
    with open(folder.parent / "texts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image", "Description"])
        for i in range(len(ds)):
            item = ds[i]
            img = (item["image"].numpy()[0] * 255).round().astype(np.uint8)
            Image.fromarray(img).save(folder / f"{item['id']}.png")
            w.writerow([f"mask_{item['id']}.png", item["text"]])
            ids.append(item["id"])
    return ids, folder.parent / "texts.csv"


def _eval_masks(model_dir: Path, data: dict, threshold: float) -> dict[str, np.ndarray]:
    pred = load_predictor(model_dir)
    got: dict[str, np.ndarray] = {}

    def keep(ids, images, gts, probs, preds):
        got.update(zip(ids, preds, strict=True))

    E.evaluate_predictor(pred, ShardDataset(data["shards_dir"], "val"), threshold=threshold, batch_size=4,
                         distances=False, progress=False, on_batch=keep)
    return got


def _median_threshold(model_dir: Path, data: dict) -> float:
    """A threshold inside the probabilities' range, so that masks are neither all empty nor all full."""
    ds = ShardDataset(data["shards_dir"], "val")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    p = load_predictor(model_dir).predict(x, [ds[i]["text"] for i in range(len(ds))])
    return float(np.median(p.numpy()))


def _read_mask(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path)) > 127).astype(np.uint8)


def test_predict_gives_evals_masks_bit_for_bit(trained, tmp_path):
    model, data = trained["supervised"], trained["data"]
    ids, texts = _write_val_pngs(data, tmp_path / "images")
    thr = _median_threshold(model, data)
    expected = _eval_masks(model, data, thr)
    assert 0 < sum(int(m.sum()) for m in expected.values()) < sum(m.size for m in expected.values())
    out = tmp_path / "out"
    summary = P.run(str(model), [str(tmp_path / "images")], out, texts_file=texts, threshold=thr, batch_size=4,
                    progress=False)
    for i in ids:
        got = _read_mask(out / "masks" / f"mask_{i}.png")
        assert np.array_equal(got, expected[i]), i
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["id"] for r in rows] == ids
    digest = hashlib.sha256((model / "model.pt").read_bytes()).hexdigest()
    assert {r["model_sha256"] for r in rows} == {digest} == {summary["model_sha256"]}
    ds = ShardDataset(data["shards_dir"], "val")
    for k, r in enumerate(rows):
        m = expected[r["id"]]
        assert int(r["lesion_pixels"]) == int(m.sum())
        assert r["text"] == ds[k]["text"]
        reg = mask_to_regions(m, (ds[k]["image"].numpy()[0] * 255).round().astype(np.uint8))
        assert r["regions"] == ("" if reg is None else "".join(map(str, reg)))
        assert 0.5 <= float(r["mean_confidence"]) <= 1.0
    assert json.loads((out / "predict.json").read_text())["eval_params_from"] == "--threshold"


def test_outputs_at_the_images_own_size_with_probs_and_overlays(trained, tmp_path, capsys):
    model = trained["supervised"]
    rng = np.random.default_rng(0)
    rgb16 = (rng.random((80, 100, 3)) * 65535).astype(np.uint16)
    Image.fromarray((rgb16[..., 0] >> 8).astype(np.uint8)).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 4096, (90, 70), dtype=np.uint16)).save(tmp_path / "grey12.tif")
    out = tmp_path / "out"
    P.run(str(model), [str(tmp_path / "rgba.png"), str(tmp_path / "grey12.tif")], out,
          text="Unilateral pulmonary infection, one infected area, upper left lung.", probs=True, overlay=True,
          progress=False)
    assert _read_mask(out / "masks" / "mask_rgba.png").shape == (80, 100)
    assert _read_mask(out / "masks" / "mask_grey12.png").shape == (90, 70)
    prob = Image.open(out / "probs" / "prob_rgba.png")
    assert prob.size == (100, 80) and prob.mode.startswith("I")
    assert Image.open(out / "overlays" / "grey12.png").size == (70, 90)
    assert "model card:" in capsys.readouterr().err and (model / "MODEL.md").is_file()


def test_tta_flip_reads_the_mirror_with_swapped_text(trained):
    pred = load_predictor(trained["supervised"])
    seen: list[list[str]] = []
    tok = pred.tokenize
    pred.tokenize = lambda texts: (seen.append(list(texts)), tok(texts))[1]
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    texts = ["one infected area, upper left lung.", "two infected areas, lower right lung and middle left lung."]
    plain = pred.predict(x, texts)
    mirrored = pred.predict(x.flip(-1), [flip_text(t) for t in texts]).flip(-1)
    seen.clear()
    tta = pred.predict(x, texts, tta="flip")
    assert seen == [texts, ["one infected area, upper right lung.",
                            "two infected areas, lower left lung and middle right lung."]]
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-6)


def test_image_only_model_needs_no_text(trained, tmp_path):
    ids, _ = _write_val_pngs(trained["data"], tmp_path / "images")
    out = tmp_path / "out"
    P.run(str(trained["image_only"]), [str(tmp_path / "images")], out, progress=False)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["id"] for r in rows] == ids and {r["text"] for r in rows} == {""}


def test_threshold_comes_from_the_regimes_eval_metrics(trained, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(trained["supervised"], tmp_path / "models" / "tiny")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "tiny.json").write_text(json.dumps({"eval_params": {"threshold": 0.37,
                                                                                "min_component_size": 3}}))
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(img)
    monkeypatch.chdir(tmp_path)
    s = P.run("tiny", [str(img)], tmp_path / "o1", text="lower left lung", progress=False)
    assert (s["threshold"], s["min_component_size"], s["eval_params_from"]) == (0.37, 3, str(Path("metrics/tiny.json")))
    s = P.run("tiny", [str(img)], tmp_path / "o2", text="lower left lung", threshold=0.8, progress=False)
    assert (s["threshold"], s["eval_params_from"]) == (0.8, "--threshold")
    (tmp_path / "metrics" / "tiny.json").write_text(json.dumps({"eval_params": {"threshold": 7}}))
    with pytest.raises(MedrefError, match=r"metrics/tiny\.json: eval_params are not valid .*--threshold"):
        P.run("tiny", [str(img)], tmp_path / "o3", text="lower left lung", progress=False)


def _bad(trained, tmp_path, make, match: str, **kw):
    """Run predict on the inputs ``make`` writes; expect one MedrefError matching ``match`` and no output."""
    images = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(MedrefError, match=match):
        P.run(str(kw.pop("model", trained["supervised"])), images, out, progress=False, **{"batch_size": 1, **kw})
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temp output left behind"


def _two_good(tmp: Path, bad: bytes | None = None) -> list[str]:
    for name in ("a", "b"):
        Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp / f"{name}.png")
    if bad is None:
        return [str(tmp / "a.png"), str(tmp / "b.png")]
    (tmp / "z_bad.png").write_bytes(bad)
    return [str(tmp / "a.png"), str(tmp / "b.png"), str(tmp / "z_bad.png")]


@pytest.mark.parametrize("case", ["missing_text", "csv_without_row", "empty_text", "blank_csv_text", "corrupt_last",
                                  "no_such_image", "threshold", "batch_size", "unknown_regime", "empty_folder"])
def test_bad_input_is_one_clear_error_and_leaves_nothing(case, trained, tmp_path):
    csv_file = tmp_path / "t.csv"
    if case == "missing_text":
        _bad(trained, tmp_path, _two_good, r"text-guided .*missing for a\.png, b\.png: give --text")
    elif case == "csv_without_row":
        csv_file.write_text("Image,Description\nmask_a.png,upper left lung\n")
        _bad(trained, tmp_path, _two_good, rf"missing for b\.png: no row in {csv_file}", texts_file=csv_file)
    elif case == "empty_text":
        _bad(trained, tmp_path, _two_good, "--text is empty", text="  ")
    elif case == "blank_csv_text":
        csv_file.write_text("Image,Description\nmask_a.png,upper left lung\nb.png,\n")
        _bad(trained, tmp_path, _two_good, r"empty report text for b\.png", texts_file=csv_file)
    elif case == "corrupt_last":  # fails after the first masks were written: still nothing in --out
        _bad(trained, tmp_path, lambda t: _two_good(t, b"\x89PNG\r\n\x1a\nnot really"),
             r"z_bad\.png: corrupt or unreadable image", text="upper left lung")
    elif case == "no_such_image":
        _bad(trained, tmp_path, lambda t: [str(t / "nope.png")], r"nope\.png: --images: no such file")
    elif case == "threshold":
        _bad(trained, tmp_path, _two_good, "--threshold 1.5", text="x", threshold=1.5)
    elif case == "batch_size":
        _bad(trained, tmp_path, _two_good, "--batch-size 0: must be at least 1", text="x", batch_size=0)
    elif case == "unknown_regime":
        _bad(trained, tmp_path, _two_good, "neither a model folder nor a regime", model="no_such_regime", text="x")
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        _bad(trained, tmp_path, lambda t: [str(t / "empty")], "holds no image files", text="x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_without_a_gpu_is_one_clear_error(trained, tmp_path):
    _bad(trained, tmp_path, _two_good, "--device cuda: no CUDA device", text="x", device="cuda")


def test_out_folder_that_is_not_a_prediction_is_refused_untouched(trained, tmp_path):
    images = _two_good(tmp_path)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(MedrefError, match="not an earlier `medref predict` output"):
        P.run(str(trained["supervised"]), images, keep, text="x", progress=False)
    with pytest.raises(MedrefError, match="holds the input"):
        P.run(str(trained["supervised"]), images, tmp_path, text="x", progress=False)
    assert (keep / "notes.txt").read_text() == "precious"


def test_cli_prints_one_line_and_exits_2(trained, tmp_path, capsys):
    images = _two_good(tmp_path)
    rc = cli.main(["predict", str(trained["supervised"]), "--images", *images, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("medref predict: error: this model is text-guided")
    rc = cli.main(["predict", str(trained["supervised"]), "--images", *images, "--text", "upper left lung",
                   "--out", str(tmp_path / "o")])
    assert rc == 0 and len(list((tmp_path / "o" / "masks").iterdir())) == 2



def test_a_params_file_given_and_missing_is_named_not_ignored(trained, tmp_path, capsys):
    """The CLI reads --params for predict and export (configuration flows down): a file that is not there is one
    error naming it, where predict once fell back to the defaults in silence."""
    images = _two_good(tmp_path)
    missing = tmp_path / "no-such-params.yaml"
    for args in (["predict", str(trained["supervised"]), "--images", *images, "--text", "upper left lung",
                  "--out", str(tmp_path / "o")],
                 ["export", str(trained["supervised"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]):
        rc = cli.main(["--params", str(missing), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith(f"medref {args[0]}: error: {missing}: params file not found"), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()

def test_model_card_written_by_train_and_completed_by_eval(trained, tmp_path):
    model, data = trained["supervised"], trained["data"]
    card = (model / "MODEL.md").read_text()
    for part in ("# Model card: tiny", "- method: supervised", "- labelled fraction: 0.25", "params digest",
                 "## Intended use", "## NOT validated for", "## Evaluation"):
        assert part in card, part
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    metrics = E.run(trained["supervised_params"], "tiny", model, data["shards_dir"], data["labels_file"],
                    tmp_path / "metrics.json", tmp_path / "eval")
    done = (tmp_path / "eval" / "MODEL.md").read_text()
    assert done.startswith(card.split("## Evaluation")[0])
    assert "per-image mean (LViT)" in done and "global / micro (GuideDecoder)" in done
    assert f"| Dice | {metrics['dice']:.4f}" in done and f"| {metrics['dice_global']:.4f} |" in done
    assert "Not evaluated in this folder" not in done
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == before  # train's output untouched


@pytest.mark.slow
def test_pull_then_predict_on_a_clone_without_data(origin, tmp_path):
    """A collaborator pulls only the model folder from the DVC remote and predicts: no shards, no training."""
    import shutil

    from tests.pipeline_utils import run, tool

    regime = "qata_10pct"
    remote = tmp_path / "remote"
    run([tool("dvc"), "remote", "add", "-f", "predict-remote", str(remote)], origin)
    run([tool("dvc"), "push", "-r", "predict-remote", f"models/{regime}"], origin)
    image = next(p for p in sorted((origin / "data" / "raw").rglob("*.png")) if not p.name.startswith("mask_"))
    readme = readme_commands()
    pull = next(c for c in readme if c[:2] == ["dvc", "pull"])
    predict = next(c for c in readme if c[:3] == ["medref", "predict", regime])

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    run([tool("dvc"), "remote", "add", "-d", "-f", "predict-remote", str(remote)], clone)
    run([tool("dvc"), *pull[1:]], clone)  # the README's command, as written
    assert not (clone / "data").exists() and (clone / "models" / regime / "model.pt").is_file()
    (clone / "scans").mkdir()
    shutil.copy(image, clone / "scans" / image.name)
    res = run([tool("medref"), *predict[1:]], clone)
    assert f"model card: models/{regime}/MODEL.md" in res.stderr
    # the origin, with all its data, predicts the same mask (written outside its work tree: the session shares it)
    out = predict.index("--out")
    run([tool("medref"), *predict[1:out], "--out", str(tmp_path / "at_origin"), "--images", str(image)], origin)
    name = f"mask_{image.stem}.png"
    assert (clone / "pred" / "masks" / name).read_bytes() == (tmp_path / "at_origin" / "masks" / name).read_bytes()
    rows = list(csv.DictReader(open(clone / "pred" / "predictions.csv")))
    assert rows[0]["model_sha256"] == hashlib.sha256((clone / "models" / regime / "model.pt").read_bytes()).hexdigest()


def readme_commands() -> list[list[str]]:
    """The command lines of the README's "Use a trained model" section, split like a shell would."""
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```bash\n")[1:]]
    return [shlex.split(line, comments=True) for b in blocks for line in b.splitlines()
            if line.startswith(("medref ", "dvc "))]


def test_readme_commands_run_as_written(trained, tmp_path, monkeypatch):
    """Every `medref predict` / `medref export` line of the README section, on a copy of a trained model."""
    import shutil

    from tests.test_dicom import dicom

    shutil.copytree(trained["supervised"], tmp_path / "models" / "qata_10pct")
    (tmp_path / "scans").mkdir()
    _two_good(tmp_path / "scans")
    shutil.copy(tmp_path / "scans" / "a.png", tmp_path / "a.png")
    (tmp_path / "b.dcm").write_bytes(dicom(np.full((70, 60), 120, np.uint8)))
    (tmp_path / "reports.csv").write_text("Image,Description\nmask_a.png,upper left lung\nb.dcm,lower right lung\n")
    monkeypatch.chdir(tmp_path)
    lines = [c for c in readme_commands() if c[0] == "medref"]
    assert {c[1] for c in lines} == {"predict", "export"} and len(lines) == 4
    for c in lines:
        shutil.rmtree(tmp_path / "pred", ignore_errors=True)
        assert cli.main(c[1:]) == 0, c
        if c[1] == "predict":
            masks = sorted(p.name for p in (tmp_path / "pred" / "masks").iterdir())
            assert masks == (["mask_a.png", "mask_b.png"])
            if "--tta" in c:  # the DICOM line: its mask at the DICOM's own size, probabilities and overlays
                assert Image.open(tmp_path / "pred" / "masks" / "mask_b.png").size == (60, 70)
                assert (tmp_path / "pred" / "probs" / "prob_b.png").is_file()
                assert (tmp_path / "pred" / "overlays" / "b.png").is_file()
    assert (tmp_path / "qata_10pct.onnx.json").is_file() and (tmp_path / "qata_10pct.pt").is_file()

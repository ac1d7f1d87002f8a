"""Training stage end to end on tiny synthetic shards: every method, predictor, determinism, resume."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline_src import provenance
from pipeline_src.inference.predictor import load_predictor
from pipeline_src.params import Params, load_raw
from pipeline_src.train import methods
from pipeline_src.train.train import run
from tests.train_fixtures import make_dataset

SMALL_MODEL = {
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 24,
    "embed_dim": 16,
    "decoder_dim": 16,
    "decoder_heads": 2,
}


def _params(repo_root, method: str, **train) -> Params:
    raw = load_raw(repo_root / "params.yaml")
    cfg = {
        "model": SMALL_MODEL,
        "epochs": 2,
        "batch_size": 6,
        "unlabelled_batch_size": 6,
        "val_max": 4,
        "checkpoint_every": 2,
        "ssl": {"burn_in_epochs": 0.25, "ramp_epochs": 0.5, "confidence": 0.5},
    }
    cfg.update(train)
    raw["regimes"]["tiny"] = {"dataset": next(iter(raw["datasets"])), "fraction": 0.25, "method": method, "train": cfg}
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def _train(params, tiny, root, resume=True):
    return run(
        params,
        "tiny",
        tiny["shards_dir"],
        tiny["labels_file"],
        tiny["split_file"],
        root / "model",
        root / "run",
        resume=resume,
    )


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_each_method_trains_and_predicts(method, tiny, tmp_path, repo_root, monkeypatch):
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    out = _train(_params(repo_root, method, max_steps=3), tiny, tmp_path)
    assert {p.name for p in out.iterdir()} >= {"model.pt", "config.json", "provenance.json", "live"}
    assert (out / "live" / "metrics.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == method and cfg["steps"] == 3
    assert cfg["exported"] == "student"  # the official protocol evaluates the student, for every method
    assert "- exported network: the student" in (out / "MODEL.md").read_text()
    # CPU weights are bit-identical only on one CPU kind: the model records which
    assert json.loads((out / "provenance.json").read_text())["cpu"] == provenance.cpu_model()
    assert (tmp_path / "run" / "last.pt").exists()
    pred = load_predictor(out)
    assert pred.method == method
    x = torch.rand(2, 1, 64, 64)
    texts = ["upper left lung", "lower right lung"]
    p = pred.predict(x, texts)
    assert p.shape == (2, 1, 64, 64) and float(p.min()) >= 0 and float(p.max()) <= 1
    img, txt = pred.embed(x, texts)
    assert img.shape == (2, 16) and torch.allclose(img.norm(dim=1), torch.ones(2))
    assert (txt is None) == (method in ("image_only", "meddisseg"))


@pytest.mark.slow
def test_two_runs_give_identical_weights(tiny, tmp_path, repo_root, monkeypatch):
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    params = _params(repo_root, "semi_medref", max_steps=4)
    a = _train(params, tiny, tmp_path / "a") / "model.pt"
    b = _train(params, tiny, tmp_path / "b") / "model.pt"
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.slow
def test_resume_after_crash_is_bit_identical(tiny, tmp_path, repo_root, monkeypatch):
    """Train 3 of 8 steps, 'crash' (the run stops; last.pt holds step 3... checkpoint_every=3), resume -> the
    same bytes as an uninterrupted run. semi_medref covers the EMA teacher, schedules and augment draws."""
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    full = _train(_params(repo_root, "semi_medref", max_steps=8), tiny, tmp_path / "full") / "model.pt"

    crash = tmp_path / "crash"
    _train(_params(repo_root, "semi_medref", max_steps=8, checkpoint_every=3), tiny, crash)  # populate last.pt ...
    ck = torch.load(crash / "run" / "last.pt", weights_only=False)
    assert ck["step"] == 8
    # ... then simulate a crash after step 3: a run that stopped there, checkpointed, and left no model
    _train(_params(repo_root, "semi_medref", max_steps=3, checkpoint_every=3), tiny, crash, resume=False)
    assert torch.load(crash / "run" / "last.pt", weights_only=False)["step"] == 3
    resumed = _train(_params(repo_root, "semi_medref", max_steps=8, checkpoint_every=3), tiny, crash) / "model.pt"
    assert resumed.read_bytes() == full.read_bytes()
    history = json.loads((crash / "model" / "live" / "metrics.json").read_text())
    assert history["step"] >= 1


def test_stale_checkpoint_from_other_params_is_not_resumed(tiny, tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    _train(_params(repo_root, "supervised", max_steps=2), tiny, tmp_path)
    _train(_params(repo_root, "supervised", max_steps=2, lr=1e-3), tiny, tmp_path)
    assert "starting from scratch" in capsys.readouterr().out


def test_nan_loss_raises(tiny, tmp_path, repo_root, monkeypatch):
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    monkeypatch.setattr(methods.losses, "binary", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        _train(_params(repo_root, "supervised", max_steps=2), tiny, tmp_path)
    assert not (tmp_path / "model").exists()


def test_dispersive_hook_adds_a_logged_loss(tiny, tmp_path, repo_root, monkeypatch):
    monkeypatch.setenv("MEDREF_PROGRESS", "0")
    out = _train(_params(repo_root, "supervised", max_steps=2, dispersive={"weight": 0.2, "stage": -2}), tiny, tmp_path)
    assert (out / "live" / "plots" / "metrics" / "train_loss_disp.tsv").exists()


def test_live_replay_leaves_dvclive_step_signal_alone(tmp_path, monkeypatch):
    """Two trainings finishing together in one repo raced on DVCLive's shared VS Code step-signal file (one
    crashed with FileNotFoundError). The export's replay neither writes nor removes it."""
    from pipeline_src.train.train import _write_live

    run_dir = tmp_path / ".dvc" / "tmp" / "exps" / "run"
    run_dir.mkdir(parents=True)
    signal = run_dir / "DVCLIVE_STEP_COMPLETED"
    signal.write_text('{"pid": 1, "step": 0}')  # another training's signal
    monkeypatch.chdir(tmp_path)
    _write_live(tmp_path / "live", [{"epoch": 1, "step": 2, "loss": 0.5}], {"method": "supervised"})
    assert signal.read_text() == '{"pid": 1, "step": 0}'
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["loss"] == 0.5

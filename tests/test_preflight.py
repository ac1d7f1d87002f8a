"""train's preflight: every check that can fail runs before any work, and before any SLURM submission."""

from __future__ import annotations

import json

import pytest

from pipeline_src import launcher
from pipeline_src.errors import MedrefError
from pipeline_src.params import Params, load_raw
from pipeline_src.train.preflight import preflight
from tests.train_fixtures import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), fraction=0.25)


def _params(repo_root, fraction=0.25, method="supervised", dataset=None, **train) -> Params:
    raw = load_raw(repo_root / "params.yaml")
    raw["regimes"]["tiny"] = {"dataset": dataset or "qata", "fraction": fraction, "method": method,
                              "train": {"batch_size": 4, **train}}
    return Params.model_validate(raw)


def _check(params, data, **kw):
    return preflight(params, "tiny", shards_dir=data["shards_dir"], labels_file=data["labels_file"],
                     split_file=data["split_file"], **kw)


def test_plan_resolves_the_methods_architecture(repo_root, tiny):
    plan = _check(_params(repo_root, method="image_only"), tiny)
    assert plan.cfg.model.arch == "image_only" and plan.n_classes == 1 and len(plan.split["labelled"]) == 6


def test_split_for_another_fraction_is_refused(repo_root, tiny):
    """The probe's repro: a split written at one fraction, train asked for another, trained on the wrong set."""
    with pytest.raises(MedrefError, match=r"written for fraction 0\.25, but regimes\.tiny\.fraction is 0\.1.*"
                                          r"medref split qata_10pct"):
        _check(_params(repo_root, fraction=0.1), tiny)


def test_split_for_other_shards_or_seed_is_refused(repo_root, tiny, tmp_path):
    stale = json.loads(tiny["split_file"].read_text())
    stale["shards_digest"] = "shards-before-a-rebuild"
    f = tmp_path / "split.json"
    f.write_text(json.dumps(stale))
    with pytest.raises(MedrefError, match="written for shards 'shards-before-a-rebuild'"):
        _check(_params(repo_root), {**tiny, "split_file": f})
    raw = load_raw(repo_root / "params.yaml")
    raw["split"] = {"seed": 5}
    raw["regimes"]["tiny"] = {"dataset": "qata", "fraction": 0.25, "method": "supervised"}
    with pytest.raises(MedrefError, match=r"written for seed 0, but split\.seed is 5"):
        _check(Params.model_validate(raw), tiny)


def test_missing_or_garbage_split_file(repo_root, tiny, tmp_path):
    with pytest.raises(MedrefError, match="split file not found"):
        _check(_params(repo_root), {**tiny, "split_file": tmp_path / "none.json"})
    bad = tmp_path / "bad.json"
    bad.write_text('{"labelled": [')
    with pytest.raises(MedrefError, match="not a valid split file"):
        _check(_params(repo_root), {**tiny, "split_file": bad})


def test_small_labelled_set(repo_root, tiny):
    with pytest.raises(MedrefError, match="gives 6 labelled image"):
        _check(_params(repo_root, batch_size=8, small_labelled="error"), tiny)
    assert _check(_params(repo_root, batch_size=8, small_labelled="cap"), tiny).cfg.batch_size == 8


def test_missing_weights_file_names_the_key(repo_root, tiny, tmp_path):
    with pytest.raises(MedrefError, match=r"regimes\.tiny\.train\.model\.image_weights: file .*nope\.pth not found"):
        _check(_params(repo_root, model={"image_weights": str(tmp_path / "nope.pth")}), tiny)


@pytest.fixture
def volumes_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({
        "kind": "volumes", "mask_encoding": "class_index", "n_classes": 9, "digest": "v", "image_size": 32,
        "splits": {"train": {"rows": 0, "shards": []}}}))
    return {"shards_dir": shards, "labels_file": tmp_path / "labels.parquet", "split_file": tmp_path / "split.json"}


def test_bad_multiclass_config_fails_before_sbatch(repo_root, volumes_shards, tmp_path, monkeypatch):
    submitted = []

    class Recorder:
        def __init__(self, *a, **k):
            pass

        def run(self, *a, **k):
            submitted.append(a)

    monkeypatch.setattr(launcher, "SlurmLauncher", Recorder)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for method, train, match in (("semi_medref", {}, "binary-only"),
                                 ("meddisseg", {"augment": {"flip_p": 0.5}}, r"regimes\.tiny\.train\.augment\.flip_p")):
        p = _params(repo_root, method=method, dataset="synapse", **train)
        with pytest.raises(MedrefError, match=match):
            launcher.launch(p, "tiny", **volumes_shards, out_dir=tmp_path / "m", run_dir=tmp_path / "r",
                            launcher="slurm", params_file=repo_root / "params.yaml")
    assert submitted == []


def test_bad_encoder_stages_fail_in_preflight(repo_root, tiny):
    with pytest.raises(MedrefError, match=r"train\.model\.out_indices: \[7, 8\] do not exist"):
        _check(_params(repo_root, model={"out_indices": [7, 8]}), tiny)

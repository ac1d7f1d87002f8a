"""Stages import only what they use: the torch-free stages import no torch, a train/eval model imports open_clip,
transformers and MONAI only when its configuration needs them (issue 25).

    .venv/bin/python -m pytest -q tests/test_lazy_imports.py

Each command runs in a fresh ``python -c`` process that calls ``pipeline_src.cli.main`` and then prints which of
the heavy packages are in ``sys.modules``: an import in the parent test process cannot hide one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import env, make_scratch_repo

HEAVY = ("torch", "open_clip", "timm", "transformers", "monai", "torchvision")
# pandas (0.4 s): a stage that reads shards (pyarrow.dataset imports it) or one small CSV need not pay for it
NO_PANDAS = {"--help", "grid", "split", "study"}
PROBE = ("import json, sys\nfrom pipeline_src.cli import main\n"
         "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         f"print('MODULES=' + json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY + ('pandas',)!r}))))\n"
         "sys.exit(rc or 0)")


def _imported(args: list[str], cwd: Path) -> set[str]:
    """The heavy packages ``medref <args>`` imported (pandas only where a stage should do without it)."""
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env={**env(), "MEDREF_PROGRESS": "0"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"medref {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("MODULES=")][-1]
    got = set(json.loads(line.removeprefix("MODULES=")))
    cmd = next((a for a in args if not a.startswith("-") and not a.endswith(".yaml")), args[0])
    return got if cmd in NO_PANDAS else got - {"pandas"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_scratch_repo(tmp_path_factory.mktemp("lazy") / "repo", regimes=["qata_10pct"])


def test_data_stages_help_and_grid_import_no_torch(repo):
    # in pipeline order: each stage reads what the one before wrote
    for args in (["--help"], ["grid"], ["download", "qata"], ["preprocess", "qata"], ["pseudolabel", "qata"],
                 ["split", "qata_10pct"]):
        got = _imported(args, repo)
        assert not got, f"medref {' '.join(args)} imported {sorted(got)}"
    assert (repo / "data" / "splits" / "qata_10pct.json").is_file()  # the chain did run


def test_study_and_report_import_no_torch(tmp_path):
    from tests import test_report as R
    from tests import test_study as S

    # study: the fixture metrics of tests/test_study.py, under a params file holding its grid
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "params.yaml").write_text(yaml.safe_dump(S._raw()))
    params, metrics, evals, _ = S.written.__wrapped__(tmp_path / "s")
    got = _imported(["--params", "params.yaml", "study", "s", "--metrics", str(metrics), "--eval-root", str(evals),
                     "--out", str(tmp_path / "s" / "studies" / "s"), "--summary", str(tmp_path / "s" / "s.json")],
                    tmp_path / "s")
    assert not got, f"medref study imported {sorted(got)}"
    assert (tmp_path / "s" / "s.json").is_file()
    # report: the fixture inputs of tests/test_report.py
    r = tmp_path / "r"
    r.mkdir()
    out = R.built.__wrapped__(r)  # builds its inputs and one report in-process; the probe writes another
    raw = {"datasets": {"qata": {"kind": "qata", "source": "synthetic"}, "mosmed": {"kind": "mosmed",
                                                                                  "source": "synthetic"}},
           "regimes": {k: {"dataset": d, "fraction": f, "method": m} for k, (d, f, m, _) in R.REGIMES.items()},
           "report": {"n_overlays": 2}}
    (r / "params.yaml").write_text(yaml.safe_dump(raw))
    got = _imported(["--params", "params.yaml", "report", "--metrics", str(r / "metrics"), "--eval-root",
                     str(r / "eval"), "--studies", str(r / "studies"), "--models", str(r / "models"), "--out",
                     str(r / "reports2")], r)
    assert not got, f"medref report imported {sorted(got)}"
    assert (r / "reports2" / "report.md").read_text() == (out / "report.md").read_text()


def test_model_imports_follow_its_configuration():
    """A CLIP-tower model is open_clip's TextTransformer, loaded without open_clip's package import (which pulls in
    transformers for CoCa); an image-only model loads no text code; MONAI only with the official decoder (the
    demo's), which is built from MONAI blocks (MONAI's package import loads transformers in turn)."""
    code = ("import sys, json\nfrom pipeline_src.models import build_model\nfrom pipeline_src.models.params import "
            "ModelParams\nnet = build_model(ModelParams(**json.loads(sys.argv[1])))\n"
            "tower = getattr(getattr(net, 'text', None), 'tower', None)\n"
            "mods = {m.split('.')[0] for m in sys.modules}\n"
            "mods |= {'open_clip'} if type(tower).__module__.startswith('open_clip') else set()\n"
            f"print(json.dumps(sorted(mods & set({HEAVY!r}))))")
    small = {"image_encoder": "resnet10t", "text_width": 16, "text_layers": 1, "text_heads": 2, "embed_dim": 16,
             "decoder_dim": 16, "decoder_heads": 2}

    def mods(**kw) -> set[str]:
        r = subprocess.run([sys.executable, "-c", code, json.dumps({**small, **kw})], capture_output=True,
                           text=True, timeout=300, env=env())
        assert r.returncode == 0, r.stderr[-3000:]
        return set(json.loads(r.stdout.splitlines()[-1]))

    clip = mods(decoder="medref")
    assert {"torch", "timm", "open_clip"} <= clip and not clip & {"transformers", "monai"}, clip
    img = mods(arch="image_only", decoder="medref")
    assert "timm" in img and not img & {"open_clip", "transformers", "monai"}, img
    official = mods(decoder="official")
    assert "monai" in official, official  # (MONAI's own package import brings transformers with it)

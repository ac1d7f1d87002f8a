"""study@<study> aggregation on fixture metrics, against values computed by hand, and the grid expansion rules.

    python -m pytest tests/test_study.py
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pipeline_src import params as P
from pipeline_src.aggregate import study
from pipeline_src.grid import grid_document

# per-image Dice of 4 test images, by (method, seed); semi_medref - supervised is +0.1 everywhere in seed 0 and
# +0.2 in seed 1, so every bootstrap replicate's seed-averaged difference is exactly 0.15
PER = {
    ("supervised", 0): [0.5, 0.6, 0.7, 0.4],
    ("supervised", 1): [0.4, 0.5, 0.6, 0.3],
    ("semi_medref", 0): [0.6, 0.7, 0.8, 0.5],
    ("semi_medref", 1): [0.6, 0.7, 0.8, 0.5],
    ("mean_teacher", 0): [0.55, 0.65, 0.75, 0.45],
    ("mean_teacher", 1): [0.7, 0.8, 0.9, 0.6],
    ("semi_medref-no_tpatchmix", 0): [0.6, 0.7, 0.8, 0.5],
    ("semi_medref-no_tpatchmix", 1): [0.6, 0.7, 0.8, 0.5],
}
TOP1 = {"supervised": 0.1, "semi_medref": 0.2, "mean_teacher": 0.1, "semi_medref-no_tpatchmix": 0.3}


def _raw(methods=("supervised", "semi_medref", "mean_teacher", "semi_medref-no_tpatchmix")) -> dict:
    return {
        "datasets": {"d": {"kind": "qata"}},
        "variants": {"semi_medref-no_tpatchmix": {"method": "semi_medref", "train": {"tpatchmix": {"enabled": False}}}},
        "studies": {"s": {"dataset": "d", "headline": "semi_medref", "fractions": [0.1], "methods": list(methods),
                          "seeds": [0, 1], "ssl_baselines": ["mean_teacher", "cutmix_ssl"], "bootstrap": 200}},
    }


@pytest.fixture()
def written(tmp_path):
    params = P.Params.model_validate(_raw())
    metrics, evals = tmp_path / "metrics", tmp_path / "eval"
    metrics.mkdir()
    for name, r in params.study_runs("s").items():
        dice = PER[r.variant, r.seed]
        tp = [round(100 * d) for d in dice]  # global Dice = 2tp / (2tp + fp + fn) with fp + fn = 2 (100 - tp)
        fp = [100 - t for t in tp]
        fn = [100 - t for t in tp]
        g = 2 * sum(tp) / (2 * sum(tp) + sum(fp) + sum(fn))
        m = {"dice": sum(dice) / 4, "dice_global": g, "iou": 0.0, "iou_global": 0.0, "hd95": 10.0 - r.seed,
             "nsd": 0.5, "alignment": {"top1": TOP1[r.variant] + 0.01 * r.seed}}
        (metrics / f"{name}.json").write_text(json.dumps(m))
        (evals / name).mkdir(parents=True)
        rows = ["id,dice,tp,fp,fn"] + [f"i{k},{dice[k]},{tp[k]},{fp[k]},{fn[k]}" for k in range(4)]
        (evals / name / "per_sample.csv").write_text("\n".join(rows) + "\n")
    return params, metrics, evals, tmp_path


def test_names_and_pairing():
    params = P.Params.model_validate(_raw())
    runs = params.study_runs("s")
    assert set(runs) == {"d_10pct", "d_10pct-s1", "d_10pct-supervised", "d_10pct-supervised-s1",
                         "d_10pct-mean_teacher", "d_10pct-mean_teacher-s1", "d_10pct-semi_medref-no_tpatchmix",
                         "d_10pct-semi_medref-no_tpatchmix-s1"}
    assert {r.split for r in runs.values()} == {"d_10pct"}, "every method and seed shares one labelled set"
    assert runs["d_10pct-s1"].method == "semi_medref" and runs["d_10pct-s1"].seed == 1
    assert runs["d_10pct-semi_medref-no_tpatchmix"].train == {"tpatchmix": {"enabled": False}}


def test_mean_std_delta_wins_ci_against_hand_values(written):
    params, metrics, evals, tmp = written
    res = study.run(params, "s", metrics, evals, tmp / "out", tmp / "s.json")
    cell = res["table"]["semi_medref"]["0.1"]["dice"]
    assert cell["n"] == 2 and math.isclose(cell["mean"], 0.65) and math.isclose(cell["std"], 0.0, abs_tol=1e-12)
    sup = res["table"]["supervised"]["0.1"]["dice"]
    assert math.isclose(sup["mean"], 0.5) and math.isclose(sup["std"], math.sqrt(2 * 0.05 ** 2))  # 0.55, 0.45
    d = next(x for x in res["deltas"] if x["method"] == "semi_medref" and x["kind"] == "baseline")["dice"]
    assert [round(x, 12) for x in d["deltas"]] == [0.1, 0.2] and math.isclose(d["mean"], 0.15)
    assert d["wins"] == 2 and d["n"] == 2
    assert d["ci95"] == pytest.approx([0.15, 0.15])  # constant per-image differences: a zero-width CI
    hd = next(x for x in res["deltas"] if x["method"] == "semi_medref" and x["kind"] == "baseline")["hd95"]
    assert hd["mean"] == 0.0 and hd["wins"] == 0  # lower is better, and equal is no win
    # best SSL baseline at 10 %: mean_teacher (cutmix_ssl is not run); semi_medref - mean_teacher per seed
    assert res["best_ssl"] == {"0.1": "mean_teacher"}
    v = res["verdicts"]["semi_medref_below_ssl_at_10pct"]
    dm = v["dice_delta"]
    assert [round(x, 12) for x in dm["deltas"]] == [0.05, -0.1] and dm["wins"] == 1
    assert dm["ci95"] == pytest.approx([-0.025, -0.025]) and v["verdict"].startswith("yes")
    # T-PatchMix on (semi_medref) minus off: top-1 0.2 - 0.3 in both seeds -> alignment drops
    t = res["verdicts"]["alignment_drops_with_tpatchmix"]
    assert t["verdict"].startswith("yes") and t["top1_on_minus_off"]["0.1"]["deltas"] == pytest.approx([-0.1, -0.1])
    assert "dispersion_up_boundaries_not_better" not in res["verdicts"], "no meddisseg run: nothing to test"
    assert json.loads((tmp / "s.json").read_text())["table"] == res["table"]
    assert "| semi_medref (headline) | 10% | 0.650 ± 0.000" in (tmp / "out" / "study.md").read_text()


def test_text_reliance_table_against_hand_values(written):
    """Eval's per-run text_reliance (shuffled / L-R swapped Dice) becomes a table: mean +- std over seeds; a run
    without it (image-only: nulls) leaves its method out of the markdown section."""
    params, metrics, evals, tmp = written
    shuffled = {("semi_medref", 0): 0.40, ("semi_medref", 1): 0.50, ("supervised", 0): 0.30, ("supervised", 1): 0.30}
    for name, r in params.study_runs("s").items():
        m = json.loads((metrics / f"{name}.json").read_text())
        true = m["dice"]
        if (r.variant, r.seed) in shuffled:
            sh = shuffled[r.variant, r.seed]
            m["text_reliance"] = {"true_dice": true, "shuffled_dice": sh, "swapped_dice": true - 0.01 * (r.seed + 1),
                                  "drop_shuffled": true - sh, "drop_swapped": 0.01 * (r.seed + 1)}
        else:
            m["text_reliance"] = dict.fromkeys(["true_dice", "shuffled_dice", "swapped_dice", "drop_shuffled",
                                                "drop_swapped"]) | {"reason": "image-only model: it reads no text"}
        (metrics / f"{name}.json").write_text(json.dumps(m))
    res = study.run(params, "s", metrics, evals, tmp / "out", tmp / "s.json")
    t = res["table"]["semi_medref"]["0.1"]
    assert math.isclose(t["text_reliance.shuffled_dice"]["mean"], 0.45)
    assert math.isclose(t["text_reliance.shuffled_dice"]["std"], math.sqrt(2 * 0.05 ** 2))
    assert math.isclose(t["text_reliance.drop_shuffled"]["mean"], 0.65 - 0.45)  # true Dice 0.65 in both seeds
    assert math.isclose(t["text_reliance.drop_swapped"]["mean"], 0.015)
    sup = res["table"]["supervised"]["0.1"]
    assert math.isclose(sup["text_reliance.drop_shuffled"]["mean"], 0.5 - 0.3)  # 0.55 - 0.3, 0.45 - 0.3
    assert res["table"]["mean_teacher"]["0.1"]["text_reliance.shuffled_dice"] == {"mean": None, "std": None, "n": 0}
    md = (tmp / "out" / "study.md").read_text()
    section = md.split("## Text reliance")[1].split("##")[0]
    assert "| semi_medref | 10% | 0.650 ± 0.000 | 0.450 ± 0.071 | 0.200 ± 0.071 |" in section
    assert "mean_teacher" not in section
    header = (tmp / "out" / "table.csv").read_text().splitlines()[0].split(",")
    assert "text_reliance.drop_shuffled_mean" in header


def test_dispersion_verdict_reads_each_direction_from_the_metric_table():
    """Med-DisSeg's test (HYPOTHESES): dispersion up at every fraction and HD95 (lower is better) and NSD nowhere
    better -> yes; an HD95 that falls at one fraction is an improvement -> no; dispersion that does not rise -> the
    loss did not do what it is for. The demo has no meddisseg ablation, so only this test reaches these verdicts."""
    def delta(mean):
        return {"seeds": [0], "deltas": [mean], "mean": mean, "wins": 0, "n": 1, "ci95": None}

    def verdict(*rows):
        ablations = [{"fraction": f, "variant": "meddisseg-disp", "against": "meddisseg",
                      "dispersion.mean_pairwise_dist": delta(disp), "hd95": delta(hd), "nsd": delta(nsd)}
                     for f, disp, hd, nsd in rows]
        params = SimpleNamespace(variants={"meddisseg-disp": SimpleNamespace(method="meddisseg")},
                                 study=lambda _: SimpleNamespace(ssl_baselines=[]))
        res = {"deltas": [], "ablations": ablations, "best_ssl": {}}
        return study.verdicts(params, "s", {"meddisseg": {}, "meddisseg-disp": {}}, res)[
            "dispersion_up_boundaries_not_better"]

    v = verdict((0.1, 0.5, 1.0, -0.1), (0.25, 0.2, 0.0, 0.0))
    assert v["verdict"].startswith("yes: dispersion rises, HD95 and NSD are no better")
    assert v["evidence"].startswith("10%: dispersion +0.500 (wins 0/1), HD95 +1.00 (wins 0/1), NSD -0.100 (wins 0/1); 25%")
    assert verdict((0.1, 0.5, 1.0, -0.1), (0.25, 0.2, -0.5, 0.0))["verdict"].startswith("no: dispersion rises")
    assert verdict((0.1, 0.5, 1.0, 0.1))["verdict"].startswith("no: dispersion rises and HD95 or NSD improve")
    assert verdict((0.1, -0.5, 1.0, -0.1))["verdict"] == "no: the loss does not raise the measured dispersion"
    assert verdict()["verdict"] == "not tested"


def test_missing_run_metrics_is_one_clear_error(written):
    params, metrics, evals, tmp = written
    (metrics / "d_10pct-s1.json").unlink()
    with pytest.raises(P.MedrefError, match=r"d_10pct-s1\.json: missing; the study needs eval@d_10pct-s1"):
        study.run(params, "s", metrics, evals, tmp / "out", tmp / "s.json")
    assert not (tmp / "out").exists() and not (tmp / "s.json").exists()


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["studies"]["s"].update(methods=["supervised", "nope"]), r"methods\[1\]: 'nope' is neither"),
    (lambda r: r["studies"]["s"].update(headline="cutmix_ssl"), r"headline: 'cutmix_ssl' is not in its methods"),
    (lambda r: r["variants"].update(supervised={"method": "semi_medref"}), r"may not take a method's name"),
    (lambda r: r["studies"]["s"].update(seeds=[0, 0]), r"must not repeat"),
    (lambda r: r.update(study_size="huge"), r"study_size: 'huge'"),
])
def test_bad_grids_are_refused(edit, match):
    raw = _raw()
    edit(raw)
    with pytest.raises(Exception, match=match):
        P.Params.model_validate(raw)


def test_full_size_swaps_in_the_full_axes():
    raw = _raw(methods=("supervised", "semi_medref"))
    raw["studies"]["s"]["full"] = {"fractions": [0.05, 0.1], "seeds": [0, 1, 2]}
    assert len(P.Params.model_validate(raw).regimes) == 4
    raw["study_size"] = "full"
    assert len(P.Params.model_validate(raw).regimes) == 2 * 2 * 3


def test_forced_architectures_match_the_methods():
    """params.FORCED_ARCH (used to list a run's weights deps without importing torch) mirrors the Method classes."""
    from pipeline_src.train.methods import METHODS

    assert {k: m.arch for k, m in METHODS.items() if m.arch} == P.FORCED_ARCH


def test_committed_full_grid_tracks_the_pretrained_text_tower():
    """The committed params.yaml at study_size: full: every full method is declared, and the pretrained-text rows
    depend on pretrain_text@qata's folder (so a re-pretrained tower re-runs exactly those runs), the others on
    no weights file."""
    from pathlib import Path

    raw = P.load_raw(Path(__file__).resolve().parents[1] / "params.yaml")
    raw["study_size"] = "full"
    doc = grid_document(raw)
    full = raw["studies"]["qata"]["full"]
    qata = [r for r in doc["runs"].values() if r["study"] == "qata"]
    assert len(qata) == len(full["fractions"]) * len(full["methods"]) * len(full["seeds"])
    text_rows = {r["variant"] for r in qata if r["text_weights_dep"] != "workflow/no-weights.txt"}
    assert text_rows == {m for m in full["methods"] if "-text_" in m} and len(text_rows) == 4
    assert {r["text_weights_dep"] for r in qata if r["variant"] in text_rows} == {"models/text/qata"}
    assert "qata" in raw["pretrain_text"]["datasets"]
    frozen = [r for r in qata if r["variant"] == "semi_medref-text_frozen"][0]
    assert frozen["method"] == "semi_medref" and frozen["train"]["model"]["text_train"] == "frozen"


def test_per_sample_table_reads_as_eval_wrote_it_and_a_damaged_one_is_named(tmp_path):
    """study reads eval's per_sample.csv with the csv module: the same doubles as pandas' parser for eval's %.6g
    cells, an empty cell is NaN, a short or empty table is one MedrefError naming the file, and a table without
    per-image counts (multi-class) gives None."""
    import numpy as np
    import pandas as pd

    from pipeline_src.aggregate.study import _read_per_sample
    from pipeline_src.errors import MedrefError

    rng = np.random.default_rng(1)
    dice = rng.random(500) ** 3
    dice[::50] = np.nan
    df = pd.DataFrame({"id": [f"0{i}" for i in range(500)], "text": ["left, right"] * 500, "dice": dice,
                       "tp": rng.integers(0, 9999, 500), "fp": 0, "fn": rng.integers(0, 99, 500)})
    per = tmp_path / "per_sample.csv"
    df.to_csv(per, index=False, float_format="%.6g")
    got = _read_per_sample(per)
    want = pd.read_csv(per, usecols=["id", "dice", "tp", "fp", "fn"], dtype={"id": str})
    assert list(got["id"]) == list(want["id"])  # "01" stays a string, not 1
    for k in ("dice", "tp", "fp", "fn"):
        assert got[k].tobytes() == want[k].to_numpy(dtype=np.float64).tobytes(), k
    per.write_text(per.read_text() + "999,short row\n")
    with pytest.raises(MedrefError, match="per_sample.csv: not eval's per-sample table"):
        _read_per_sample(per)
    # a multi-class run's per-case table (no tp column) has no per-image rows to bootstrap; an empty file is named
    per.write_text("id,dice_mean,dice_c1\ncase_0,0.5,0.5\n")
    assert _read_per_sample(per) is None
    per.write_text("")
    with pytest.raises(MedrefError, match="per_sample.csv: empty"):
        _read_per_sample(per)

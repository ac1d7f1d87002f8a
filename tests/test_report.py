"""report builder on synthetic metrics files: rows, published rows marked, plots and figures written; index.html is
report.md rendered (nothing of it missing), learning curves from DVCLive logs, --self-contained inlines the images.

    .venv/bin/python -m pytest -q tests/test_report.py
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_src.aggregate import report
from pipeline_src.evaluate import plots
from pipeline_src.params import Params

REGIMES = {
    "qata_1pct": ("qata", 0.01, "supervised", 0.41),
    "qata_10pct": ("qata", 0.10, "supervised", 0.55),
    "qata_100pct": ("qata", 1.0, "supervised", 0.70),
    "qata_10pct_semi": ("qata", 0.10, "semi_medref", 0.60),
    "qata_100pct_semi": ("qata", 1.0, "semi_medref", 0.72),
    "mosmed_25pct": ("mosmed", 0.25, "supervised", 0.50),
}


def _params() -> Params:
    return Params.model_validate(
        {
            "datasets": {
                "qata": {"kind": "qata", "source": "synthetic"},
                "mosmed": {"kind": "mosmed", "source": "synthetic"},
            },
            "regimes": {k: {"dataset": d, "fraction": f, "method": m} for k, (d, f, m, _) in REGIMES.items()},
            "report": {"n_overlays": 2},
        }
    )


def _metrics(regime, dataset, fraction, method, dice) -> dict:
    return {
        "regime": regime, "dataset": dataset, "method": method, "fraction": fraction, "eval_split": "test",
        "n": 60, "dice": dice, "dice_std": 0.2, "iou": dice - 0.1, "iou_std": 0.2, "dice_global": dice + 0.06,
        "iou_global": dice - 0.04, "hd95": 12.5, "assd": 3.25, "nsd": 0.5, "sensitivity": 0.8, "specificity": 0.99,
        "per_region": {"left-upper": {"n": 10, "dice": dice, "iou": dice - 0.1}, "unknown": {"n": 0, "dice": None}},
        "alignment": {"top1": 0.25},
        "provenance": {
            "git": {"commit": "abcdef1234567890" + regime, "dirty": False},
            "params_digest": "p" * 64,
            "inputs": {"shards": "s" * 64, "labels": "l" * 64, "model": "m" * 64},
            "train": {"git": {"commit": "t" * 40}, "params_digest": "q" * 64, "inputs": {"split": "x" * 64}},
        },
    }  # fmt: skip


@pytest.fixture
def built(tmp_path) -> Path:
    mdir, eroot, out = tmp_path / "metrics", tmp_path / "eval", tmp_path / "reports"
    for regime, (ds, f, m, d) in REGIMES.items():
        (mdir).mkdir(exist_ok=True)
        (mdir / f"{regime}.json").write_text(json.dumps(_metrics(regime, ds, f, m, d)))
    # not regime metrics: pseudolabel agreement (subfolder) and an unrelated JSON
    (mdir / "labels").mkdir()
    (mdir / "labels" / "qata.json").write_text(json.dumps({"agreement": 0.9}))
    (mdir / "other.json").write_text(json.dumps({"agreement": 0.9}))
    # eval figures for one regime, as evaluate.run writes them
    ev = eroot / "qata_10pct"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32)).astype(np.uint8)
    gt = np.zeros((32, 32), np.uint8)
    gt[8:16, 8:16] = 1
    for kind in ("best", "median", "worst"):
        plots.overlay(img, gt, np.roll(gt, 2, axis=1), "upper left lung", kind, ev / "overlays" / f"{kind}_0.png")
    plots.dice_histogram(rng.random(20), 0.6, ev / "dice_hist.png", "qata_10pct")
    studies = _study(tmp_path / "studies")
    models = _live_logs(tmp_path / "models")
    report.run(_params(), mdir, eroot, out, studies_dir=studies, models_root=models)
    return out


VERDICT = "inconclusive: the CI of the difference includes 0"


def _study(root: Path) -> Path:
    """A study's outputs as study.py writes them (only what the report reads: study.md, its figure, the summary)."""
    d = root / "qata"
    d.mkdir(parents=True)
    (root / "qata.json").write_text("{}")
    (d / "study.md").write_text(
        "# Study `qata` (qata, study_size demo)\n\nSeeds [0]; mean ± std over seeds.\n\n"
        "| method | labelled | Dice |\n|---|---|---|\n| semi_medref (headline) | 10% | 0.600 |\n| supervised | 10% | 0.550 |\n"
        "\n## Paired deltas (method − reference, same labelled set, seed by seed)\n\n"
        "| labelled | method | against | Δ Dice |\n|---|---|---|---|\n| 10% | semi_medref | supervised (baseline) | +0.050 |\n"
        f"\n## Falsification tests\n\n- **semi_medref_below_ssl_at_10pct**: {VERDICT}. delta -0.01 [-0.02, 0.01]\n"
        "\n![Dice vs labelled fraction](dice_vs_fraction.png)\n"
    )
    plots.dice_histogram(np.linspace(0, 1, 10), 0.5, d / "dice_vs_fraction.png", "stand-in")
    return root


def _live_logs(root: Path) -> Path:
    """DVCLive folders as train.py writes them: a teacher-student run with student/teacher keys, a supervised run
    without (today's logs), and qata_1pct with none at all."""
    def tsv(run, key, values):
        f = root / run / "live" / "plots" / "metrics" / f"{key}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"step\t{key}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))

    for run in ("qata_10pct_semi", "qata_10pct"):
        tsv(run, "train_loss", [1.2, 0.9, 0.7])
        tsv(run, "train_loss_sup", [1.0, 0.8, 0.6])
        tsv(run, "val_dice", [0.2, 0.4, 0.5])
        tsv(run, "lr", [1e-3, 1e-3, 1e-4])  # not a curve key: stays out of the figure
    tsv("qata_10pct_semi", "val_dice_student", [0.2, 0.4, 0.5])
    tsv("qata_10pct_semi", "val_dice_teacher", [0.1, 0.3, 0.55])
    return root


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_table_rows_and_published_marked(built):
    rows = _rows(built / "report.csv")
    ours = [r for r in rows if r["source"] == "ours"]
    pub = [r for r in rows if r["source"] != "ours"]
    assert sorted(r["regime"] for r in ours) == sorted(REGIMES)  # labels/ and other.json skipped
    q100 = next(r for r in ours if r["regime"] == "qata_100pct")
    assert float(q100["dice"]) == pytest.approx(70.0) and float(q100["dice_global"]) == pytest.approx(76.0)
    assert q100["commit"].startswith("abcdef") and q100["split_digest"] == "x" * 64
    assert {r["source"] for r in pub} == {"published, not ours"}
    assert sorted((r["dataset"], r["method"]) for r in pub) == [
        ("mosmed", "LViT-T"), ("mosmed", "U-Net"), ("qata", "GuideDecoder"), ("qata", "LViT-T"), ("qata", "U-Net"),
    ]  # fmt: skip
    gd = next(r for r in pub if r["method"] == "GuideDecoder")
    # GuideDecoder reports the global convention only: the per-image cell stays empty
    assert gd["dice_global"] == "89.78" and gd["iou_global"] == "81.45" and gd["dice"] == ""
    lvit = next(r for r in pub if r["method"] == "LViT-T" and r["dataset"] == "qata")
    assert lvit["dice"] == "83.66" and lvit["iou"] == "75.11" and lvit["dice_global"] == ""

    md = (built / "report.md").read_text()
    assert md.count("| **published, not ours** |") == 5
    assert "synthetic" in md and "not comparable" in md
    assert "55.00 ± 20.00" in md  # qata_10pct per-image Dice, mean ± std in %
    assert "abcdef123456" in md and "pppppppppppp" in md  # commit and params digest per row
    assert "| qata_10pct | 55.00 (10)" in md  # per-region table


def test_report_plots_and_figures(built):
    png = built / "dice_vs_fraction.png"
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 400
    long = _rows(built / "dice_vs_fraction.csv")
    assert {"dataset", "method", "fraction_pct", "dice", "dice_global"} <= set(long[0])
    wide = _rows(built / "plots" / "dice_vs_fraction" / "qata.csv")
    assert list(wide[0]) == ["fraction_pct", "semi_medref", "semi_medref_global", "supervised", "supervised_global"]
    assert [float(r["fraction_pct"]) for r in wide] == [1.0, 10.0, 100.0]
    assert wide[0]["semi_medref"] == ""  # no semi_medref run at 1 %
    # n_overlays=2 -> best and median copied, in that order
    assert sorted(p.name for p in (built / "overlays" / "qata_10pct").iterdir()) == ["best_0.png", "median_0.png"]
    assert (built / "hist" / "qata_10pct.png").exists()
    page = (built / "index.html").read_text()
    assert 'src="overlays/qata_10pct/best_0.png"' in page and 'src="dice_vs_fraction.png"' in page
    assert page.count('<tr class="pub">') == 5


def test_index_html_holds_every_section_of_report_md(built):
    md, page = (built / "report.md").read_text(), (built / "index.html").read_text()
    assert report.missing_from_page(md, page) == []
    # the table of contents: one entry per dataset and per study, each linking to its heading
    toc = page[page.index('<nav class="toc"'):page.index("</nav>")]
    for heading in ("mosmed (data source: synthetic)", "qata (data source: synthetic)", "Study qata (qata, study_size demo)",
                    "Learning curves (per epoch, from each run's DVCLive log)", "Provenance of each row"):
        anchor = re.search(rf'<a href="#([^"]+)">{re.escape(heading)}</a>', toc)
        assert anchor, heading
        assert f'id="{anchor.group(1)}"' in page
    assert VERDICT in page and "55.00 ± 20.00" in page
    # every image by a relative path that exists
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 7 and all(not s.startswith(("/", "data:")) and (built / s).is_file() for s in srcs), srcs
    # wide tables scroll in their own box, with the header row sticky
    assert page.count('<div class="table-wrap"><table>') == page.count("<table>") > 5
    assert "position:sticky" in page


def test_a_section_missing_from_the_page_is_caught(built):
    md, page = (built / "report.md").read_text(), (built / "index.html").read_text()
    start = page.index('id="falsification-tests"')
    cut = page[: page.rindex("<", 0, start)] + page[page.index("</ul>", start) + 5 :]
    missing = report.missing_from_page(md, cut)
    assert "heading: Falsification tests" in missing
    assert any(VERDICT in m and m.startswith("list item") for m in missing), missing
    # a table cell, an image
    assert report.missing_from_page(md, page.replace("55.00 ± 20.00", "55.0", 1)) == ["table cell: 55.00 ± 20.00"]
    alt = 'alt="qata_10pct Dice histogram"'
    assert "image: qata_10pct Dice histogram" in report.missing_from_page(md, page.replace(alt, 'alt=""'))


def test_learning_curves_teacher_student_and_fallback(built):
    md = (built / "report.md").read_text()
    for run in ("qata_10pct_semi", "qata_10pct"):
        with Image.open(built / "curves" / f"{run}.png") as im:
            assert im.size[0] > 600
        assert f"![{run} learning curves](curves/{run}.png)" in md
    assert not (built / "curves" / "qata_1pct.png").exists()  # no log: no figure, no row
    assert "| qata_10pct_semi | semi_medref | 3 | 0.7000 | 0.5000 | 0.5000 | 0.5500 |" in md
    assert "| qata_10pct | supervised | 3 | 0.7000 | 0.5000 | — | — |" in md  # today's logs: no student/teacher
    series = report.read_live(built.parent / "models" / "qata_10pct_semi")
    assert set(series) == {"train_loss", "train_loss_sup", "val_dice", "val_dice_student", "val_dice_teacher"}
    assert series["val_dice_teacher"][-1] == (2.0, 0.55)


def test_self_contained_page_inlines_every_image(built, tmp_path):
    base = built.parent
    out = tmp_path / "mail"
    report.run(_params(), base / "metrics", base / "eval", out, studies_dir=base / "studies",
               models_root=base / "models", self_contained=True)
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert report.missing_from_page((out / "report.md").read_text(), page) == []
    # the study's own page is always self-contained (Snakemake's report embeds it alone)
    study = (out / "studies" / "qata.html").read_text()
    assert VERDICT in study and 'src="data:image/png;base64,' in study


def test_report_without_metrics_folder_is_a_clear_error(tmp_path):
    from pipeline_src.errors import MedrefError

    with pytest.raises(MedrefError, match="metrics folder not found"):
        report.run(_params(), tmp_path / "nope", tmp_path / "eval", tmp_path / "reports")

"""pipeline_src/evaluate/metric_specs.py is the one table of metrics: study and report take a metric's label, unit,
digits, direction, percent scaling and report.csv name from it, not from declarations of their own (issue 28).

    .venv/bin/python -m pytest -q tests/test_metric_specs.py
"""

from __future__ import annotations

from dataclasses import replace

from pipeline_src.aggregate import report, study
from pipeline_src.evaluate import metric_specs
from tests import test_study as S

HD95 = metric_specs.METRICS["hd95"]
# HD95 re-declared in the table alone: another label, unit and digits, and higher now counts as better
CHANGED = replace(HD95, label="HD95x", unit="mm", digits=4, lower_is_better=False)


def _pair(x: float, y: float) -> tuple[dict, dict]:
    return {0: {"metrics": {"hd95": x}, "per": None}}, {0: {"metrics": {"hd95": y}, "per": None}}


def test_study_takes_label_unit_digits_and_direction_from_the_table(tmp_path, monkeypatch):
    assert study.paired(*_pair(5.0, 4.0), "hd95", None)["wins"] == 0, "HD95: lower is better"
    params, metrics, evals, tmp = S.written.__wrapped__(tmp_path)
    monkeypatch.setitem(metric_specs.METRICS, "hd95", CHANGED)
    study.run(params, "s", metrics, evals, tmp / "out", tmp / "s.json")
    lines = (tmp / "out" / "study.md").read_text().splitlines()
    head = next(ln for ln in lines if ln.startswith("| method | labelled |"))
    assert "| HD95x mm |" in head and not any("HD95 px" in ln for ln in lines)
    assert any(ln.startswith("| labelled | method | against |") and "| Δ HD95x |" in ln for ln in lines)
    row = next(ln for ln in lines if ln.startswith("| semi_medref (headline) | 10% |"))
    assert "| 9.5000 ± 0.7071 |" in row  # hd95 = 10 - seed, seeds 0 and 1, to the table's 4 digits
    assert study.paired(*_pair(5.0, 4.0), "hd95", None)["wins"] == 1, "the table's direction decides a win"


def test_report_takes_header_scaling_and_csv_name_from_the_table(monkeypatch):
    monkeypatch.setitem(metric_specs.METRICS, "hd95", CHANGED)
    m = {"regime": "r", "dataset": "qata", "method": "supervised", "fraction": 0.1, "_file": "r.json", "hd95": 3.0}
    head = report.table_head()
    assert "HD95x mm" in head and "HD95 px" not in head
    assert report._table_cells(report.row_for(m, "synthetic"))[head.index("HD95x mm")] == "3.00"
    monkeypatch.setitem(metric_specs.METRICS, "hd95", replace(CHANGED, percent=True, column="hd95_x"))
    row = report.row_for(m, "synthetic")
    assert row["hd95_x"] == 300.0 and "hd95" not in row
    assert "hd95_x" in report.csv_columns() and "hd95" not in report.csv_columns()

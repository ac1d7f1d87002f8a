"""Eval's text-reliance score: Dice with shuffled texts (a seeded derangement) and with left/right swapped.

    .venv/bin/python -m pytest -q tests/test_text_reliance.py
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from pipeline_src.evaluate.evaluate import derangement, evaluate_predictor, text_reliance


class SideReader:
    """Predicts the image half its text names ("left" = image-left): a model that relies on the text only."""

    net = SimpleNamespace(uses_text=True)

    def predict(self, images, texts):
        out = torch.zeros(images.shape[0], 1, *images.shape[-2:])
        w = images.shape[-1]
        for i, t in enumerate(texts):
            if "left" in t.lower():
                out[i, :, :, : w // 2] = 1
            if "right" in t.lower():
                out[i, :, :, w // 2:] = 1
        return out


def _items(n=6, size=16):
    items = []
    for i in range(n):
        side = "left" if i % 3 else "right"
        mask = torch.zeros(1, size, size)
        if side == "left":
            mask[..., : size // 2] = 1
        else:
            mask[..., size // 2:] = 1
        items.append({"id": f"t{i}", "image": torch.rand(1, size, size), "mask": mask,
                      "text": f"one infected area, lower {side} lung"})
    return items


def test_a_text_reading_model_loses_dice_under_both_perturbations():
    items = _items()
    p = SideReader()
    summary, per = evaluate_predictor(p, items, batch_size=4, distances=False, progress=False)
    assert summary["dice"] == 1.0
    got = text_reliance(p, items, per["text"].tolist(), summary["dice"], seed=0, batch_size=4)
    assert got["swapped_dice"] == 0.0 and got["drop_swapped"] == 1.0 and got["n_swapped_texts"] == 6
    # shuffled: each image gets another's text; 4 "left" and 2 "right" texts, so some still match
    assert 0.0 < got["shuffled_dice"] < 1.0 and got["drop_shuffled"] == 1.0 - got["shuffled_dice"]
    assert got == text_reliance(p, items, per["text"].tolist(), summary["dice"], seed=0, batch_size=4)


def test_image_only_models_get_null_with_a_reason():
    p = SimpleNamespace(net=SimpleNamespace(uses_text=False))
    got = text_reliance(p, _items(), ["x"] * 6, 0.5, seed=0)
    assert got["true_dice"] is None and got["drop_shuffled"] is None and "image-only" in got["reason"]


def test_derangement_has_no_fixed_point_and_follows_the_seed():
    for n in (2, 3, 10, 60):
        for seed in range(5):
            perm = derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()
    assert derangement(60, 0).tolist() == derangement(60, 0).tolist() != derangement(60, 1).tolist()


def test_eval_run_writes_text_reliance_beside_the_dice(tmp_path, monkeypatch):
    import json

    from pipeline_src.evaluate import evaluate as E
    from tests.test_eval_evaluate import ThresholdPredictor, _params, write_shards

    shards, labels = write_shards(tmp_path)
    model_dir = tmp_path / "models" / "qata_10pct"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(b"stand-in")
    monkeypatch.setattr(E, "_load_predictor", lambda model_dir, device: ThresholdPredictor())  # ignores the text
    E.run(_params(), "qata_10pct", model_dir, shards, labels, tmp_path / "m.json", tmp_path / "eval")
    tr = json.loads((tmp_path / "m.json").read_text())["text_reliance"]
    m = json.loads((tmp_path / "m.json").read_text())
    assert tr["true_dice"] == m["dice"] == tr["shuffled_dice"] == tr["swapped_dice"]
    assert tr["drop_shuffled"] == tr["drop_swapped"] == 0.0 and tr["n"] == 7
    E.run(_params(text_reliance=False), "qata_10pct", model_dir, shards, labels, tmp_path / "m2.json",
          tmp_path / "eval2")
    assert "text_reliance" not in json.loads((tmp_path / "m2.json").read_text())


def test_report_rows_carry_the_drops_in_points():
    from pipeline_src.aggregate.report import _table_cells, row_for, table_head

    m = {"regime": "r", "dataset": "qata", "method": "supervised", "fraction": 0.1, "dice": 0.6, "_file": "r.json",
         "text_reliance": {"drop_shuffled": 0.14, "drop_swapped": 0.03}}
    row = row_for(m, "synthetic")
    assert abs(row["drop_shuffled"] - 14.0) < 1e-9 and abs(row["drop_swapped"] - 3.0) < 1e-9
    cells = _table_cells(row)
    assert len(cells) == len(table_head()) and cells[-2:] == ["14.00", "3.00"]
    image_only = row_for({**m, "text_reliance": {"drop_shuffled": None, "reason": "image-only"}}, "synthetic")
    assert image_only["drop_shuffled"] is None and _table_cells(image_only)[-2] == "—"

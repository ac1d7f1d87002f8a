"""train.model values that torch would only reject deep inside a layer fail in params validation, naming the key."""

from __future__ import annotations

import pytest
import yaml

from pipeline_src import cli


@pytest.mark.parametrize("key,value,expect", [
    ("text_heads", 3, "text_heads: 3 does not divide text_width 128"),
    ("decoder_heads", 5, "decoder_heads: 5 does not divide decoder_dim 64"),
    ("out_indices", [], "out_indices: at least one encoder stage"),
    ("out_indices", [3, 1], "out_indices: [3, 1] must be distinct"),
])
def test_inconsistent_model_params_are_one_error(repo_root, tmp_path, capsys, key, value, expect):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["train"]["model"][key] = value
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert cli.main(["--params", str(f), "split", "qata_10pct", "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err and str(f) in err, err
    assert not (tmp_path / "s.json").exists()

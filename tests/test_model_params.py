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


def test_out_of_range_stages_blame_out_indices_not_the_encoder():
    from pipeline_src.errors import MedrefError
    from pipeline_src.models.encoders import ImageEncoder

    with pytest.raises(MedrefError, match=r"train\.model\.out_indices: \[7, 8\] do not exist in 'resnet18', which has "
                                          r"5 feature stages"):
        ImageEncoder("resnet18", None, (7, 8))
    with pytest.raises(MedrefError, match="train.model.image_encoder: cannot build timm model 'no_such_net'"):
        ImageEncoder("no_such_net", None, (1, 2))

"""Bad inputs after ingest: weights files for another model, garbage weights, a local-dir: folder without its
config, NaN in the agreement metrics, unknown-position texts, `medref report` with no metrics.

.venv/bin/pytest tests/test_bad_input_models.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from pipeline_src import cli
from pipeline_src.errors import MedrefError
from pipeline_src.labels import pseudolabel
from pipeline_src.models.encoders import ImageEncoder
from pipeline_src.models.params import ModelParams
from pipeline_src.models.text import TextEncoder, build_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _text(width: int, weights: str | None = None) -> ModelParams:
    return ModelParams(text_width=width, text_layers=1, text_heads=2, context_length=16, embed_dim=16,
                       text_weights=weights)


def test_weights_of_another_architecture_are_refused_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    with pytest.raises(MedrefError) as e:
        ImageEncoder("resnet18", str(path))  # loaded 97/120 tensors without a word before
    msg = str(e.value)
    assert "train.model.image_weights" in msg and str(path) in msg and "of the encoder's 100 tensors" in msg


def test_a_file_with_one_matching_tensor_is_refused(tmp_path: Path) -> None:
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "conv1.pth"
    torch.save({"conv1.weight": sd["conv1.weight"]}, path)
    with pytest.raises(MedrefError, match=r"only 1 of the encoder's 100 tensors"):
        ImageEncoder("resnet18", str(path))


def test_matching_weights_load_and_log_the_counts(tmp_path: Path, capsys) -> None:
    rgb = timm.create_model("resnet18", pretrained=False)
    sd = {k: v for k, v in rgb.state_dict().items() if not k.endswith("num_batches_tracked")}  # an old checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    enc = ImageEncoder("resnet18", str(path))
    assert torch.equal(enc.body.state_dict()["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert f"{path}: loaded 100/100 encoder tensors" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["image", "text"])
def test_garbage_weights_file_is_named_without_torch_advice(tmp_path: Path, which: str) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"\x80\x04garbage bytes, not a checkpoint" * 10)
    with pytest.raises(MedrefError) as e:
        if which == "image":
            ImageEncoder("resnet18", str(path))
        else:
            TextEncoder(_text(32, str(path)))
    msg = str(e.value)
    assert str(path) in msg and "not a readable PyTorch weights file" in msg and "weights_only=False" not in msg


def test_text_weights_for_another_width_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "text64.pth"
    torch.save(TextEncoder(_text(64)).tower.state_dict(), path)
    with pytest.raises(MedrefError, match=r"train.model.text_weights: .*only \d+ of the text tower"):
        TextEncoder(_text(32, str(path)))


def test_local_dir_without_open_clip_config_names_folder_and_file(tmp_path: Path) -> None:
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"")
    for build in (lambda w: TextEncoder(_text(32, w)), lambda w: build_tokenizer(16, w)):
        with pytest.raises(MedrefError) as e:
            build(f"local-dir:{folder}")
        assert str(folder) in str(e.value) and "open_clip_config.json" in str(e.value)


def _cols(texts: list[str], text_regions: list, mask_regions: list) -> dict[str, list]:
    n = len(texts)
    return {"id": [str(i) for i in range(n)], "split": ["val"] * n, "text": texts, "text_regions": text_regions,
            "mask_regions": mask_regions, "n_areas": [None] * n, "position_spans": [[]] * n}


def test_agreement_report_is_strict_json_and_counts_unknown_texts() -> None:
    texts = ["Pulmonary infection, one infected area.", "Поражение левого легкого", "qwzx vbnm", "#### 1234", ""]
    rep = pseudolabel.report(_cols(texts, [None] * 5, [[1, 0, 0, 0, 0, 0]] * 5))
    json.dumps(rep, allow_nan=False)  # bare NaN before: side_agreement/exact_match with nothing to compare
    assert rep["compared"] == 0 and rep["side_agreement"] is None and rep["exact_match"] is None
    assert rep["unknown_texts"] == {"no_position_word": 1, "no_report_word": 2, "no_letters": 2}


def test_unknown_reason_of_each_kind_of_text() -> None:
    assert pseudolabel.unknown_reason("Bilateral pulmonary infection.") == "no_position_word"
    assert pseudolabel.unknown_reason("infiltrado en el pulmón izquierdo") == "no_report_word"
    assert pseudolabel.unknown_reason("\x00\x01 42 !!") == "no_letters"


def test_report_on_an_empty_metrics_folder_is_one_cli_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "labels").mkdir()  # label agreement lives below, it is not a regime's metrics
    out = tmp_path / "reports"
    rc = cli.main(["--params", str(REPO / "params.yaml"), "report", "--metrics", str(tmp_path / "metrics"),
                   "--eval-root", str(tmp_path / "eval"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "no regime metrics found" in err and "medref eval" in err
    assert not out.exists()

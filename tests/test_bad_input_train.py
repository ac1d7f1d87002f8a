"""Bad input and bad luck at training time: a full disk, and report texts that name no position."""

from __future__ import annotations

import errno

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_src.errors import MedrefError
from pipeline_src.train import checkpoint as ckpt_io
from pipeline_src.train.train import run
from tests.test_train import _params
from tests.train_fixtures import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def _train(params, data, root):
    return run(params, "tiny", data["shards_dir"], data["labels_file"], data["split_file"], root / "model",
               root / "run")


def test_disk_full_while_training_names_the_file_and_the_disk(repo_root, tiny, tmp_path, monkeypatch):
    """It used to be an OSError traceback that mentioned neither the disk nor the file."""
    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt_io, "save_torch", full)
    with pytest.raises(MedrefError, match=r"last\.pt: disk full while writing it .* MiB free on the filesystem of"):
        _train(_params(repo_root, "supervised", max_steps=2, checkpoint_every=1), tiny, tmp_path)
    assert not (tmp_path / "model").exists()


def test_train_says_how_many_texts_name_no_position(repo_root, tiny, tmp_path, capsys):
    labels = pq.read_table(tiny["labels_file"]).to_pylist()
    unknown = [r["id"] for r in labels if r["split"] == "train"][:3]
    for r in labels:
        if r["id"] in unknown:  # what the label stage writes for "Pulmonary infection." or a foreign-language text
            r["text_regions"], r["position_spans"] = None, []
    f = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(labels, schema=pq.read_schema(tiny["labels_file"])), f)
    _train(_params(repo_root, "supervised", max_steps=1, val_max=0), {**tiny, "labels_file": f}, tmp_path)
    assert "3 of 24 training texts name no lung position" in capsys.readouterr().out

"""models/<run>/ has one owner (pipeline_src/models/folder.py): one writer, one reader, and no other module that
names its files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pipeline_src.errors import MedrefError
from pipeline_src.models import folder
from pipeline_src.models.folder import ModelFolder

PKG = Path(__file__).resolve().parents[1] / "pipeline_src"
FILES = {folder.MODEL, folder.CONFIG, folder.PROVENANCE, folder.CARD, folder.EXPORT}
# modules that name a config.json of another kind of folder (a timm / transformers hub snapshot), with the reason
OTHER_CONFIG_JSON = {"models/encoders.py": "timm hub snapshot", "models/text_hf.py": "transformers folder"}


def _write(out: Path, **over) -> str:
    kw = dict(state_dict={"w": torch.arange(4.0)}, model_config={"arch": "x"}, method="supervised", regime="r",
              config={"regime": "r", "input": {"image_size": 32}}, provenance={"inputs": {"shards": "abc"}},
              card=lambda sha: f"# card\nsha {sha}\n", live=lambda d: (d / "plots" / "metrics").mkdir(parents=True))
    kw.update(over)
    return folder.write(out, **kw)


def test_what_the_writer_writes_the_reader_returns(tmp_path):
    out = tmp_path / "models" / "r"
    sha = _write(out)
    m = ModelFolder(out)
    blob, digest = m.load_weights()
    assert digest == sha == m.provenance()["model_sha256"]
    assert torch.equal(blob["state_dict"]["w"], torch.arange(4.0)) and blob["method"] == "supervised"
    assert m.config()["input"] == {"image_size": 32}
    assert m.trained_on_shards() == "abc"
    assert m.train_record() == {"git": None, "params_digest": None, "inputs": {"shards": "abc"}, "weights": None}
    assert m.card() == f"# card\nsha {sha}\n"
    assert m.learning_curves() == {}
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES - {folder.EXPORT}, folder.LIVE])
    assert _write(tmp_path / "again") == sha  # same inputs, same bytes


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "r"
    sha = _write(out)

    def broken_card(_sha):
        raise RuntimeError("card failed")

    with pytest.raises(RuntimeError, match="card failed"):
        _write(out, state_dict={"w": torch.zeros(2)}, card=broken_card)
    assert ModelFolder(out).verified_digest() == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temp folder left


def test_a_modified_model_file_is_refused_by_name(tmp_path):
    out = tmp_path / "r"
    _write(out)
    with open(out / folder.MODEL, "ab") as f:
        f.write(b"x")
    with pytest.raises(MedrefError, match=r"model\.pt: corrupted or modified model file .*dvc checkout"):
        ModelFolder(out).load_weights()


def test_damaged_json_and_a_missing_model_are_named(tmp_path):
    out = tmp_path / "r"
    _write(out)
    (out / folder.PROVENANCE).write_text("{not json")
    with pytest.raises(MedrefError, match=r"provenance\.json: not valid JSON .*dvc checkout"):
        ModelFolder(out).verified_digest()
    (out / folder.MODEL).unlink()
    with pytest.raises(MedrefError, match=r"model\.pt: no trained model \(run `medref train r` first\)"):
        ModelFolder(out).require_weights("r")
    assert ModelFolder(tmp_path / "none").config() == {} and ModelFolder(tmp_path / "none").provenance() is None


def test_learning_curves_by_file_skip_malformed_lines(tmp_path):
    out = tmp_path / "r"
    _write(out)
    tsv = out / folder.LIVE / "plots" / "metrics"
    (tsv / "val_dice.tsv").write_text("step\tval_dice\n0\t0.5\n1\tnan-ish\n2\t0.7\n")
    (tsv / "lr.tsv").write_text("step\tlr\n")
    assert ModelFolder(out).learning_curves() == {"val_dice": [(0.0, 0.5), (2.0, 0.7)]}


def _constants(tree: ast.AST):
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def _names_a_file(value: str, rel: str) -> bool:
    names = FILES - {folder.CONFIG} if rel in OTHER_CONFIG_JSON else FILES
    # a path or an f-string's piece of one ("/model.pt"); prose that mentions a file mid-sentence is not a reader
    return any(value == n or value.startswith(f"/{n}") or value.endswith(f"/{n}") for n in names | {folder.LIVE})


def test_no_other_module_names_the_model_folder_files():
    """A reader of models/<run>/ outside folder.py would spell one of its file names: none does."""
    found = [f"{f.relative_to(PKG)}:{node.lineno}: {node.value!r}"
             for f in sorted(PKG.rglob("*.py")) if f.relative_to(PKG).as_posix() != "models/folder.py"
             for node in _constants(ast.parse(f.read_text())) if _names_a_file(node.value, f.relative_to(PKG).as_posix())]
    assert not found, "model-folder files named outside pipeline_src/models/folder.py:\n" + "\n".join(found)


def test_the_rule_catches_a_reader():
    tree = ast.parse('"""model.pt, the docstring"""\np = model_dir / "provenance.json"\nq = f"{model_dir}/model.pt"\n'
                     'c = d / "config.json"\nm = "model.pt sha256 differs"\nx = f"{d}/config.json has no size"\n'
                     'y = "read from `models/<run>/live/` (the files)"')
    hits = [n.value for n in _constants(tree) if _names_a_file(n.value, "inference/x.py")]
    assert hits == ["provenance.json", "/model.pt", "config.json", "/config.json has no size"]
    assert [n.value for n in _constants(tree) if _names_a_file(n.value, "models/encoders.py")] == [
        "provenance.json", "/model.pt"]

"""The other raw layouts users have (Kaggle QaTa-COV19-v2, MosMedData+ frames/masks) read into the same pairs.

.venv/bin/pytest tests/test_data_layouts.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline_src.data import layouts, synthetic


def test_kaggle_qata_v2_layout_with_lvit_val_carve_out(tmp_path: Path) -> None:
    sgseg = synthetic.generate(tmp_path / "s", n_train=8, n_val=2, n_test=3, image_size=32, seed=2, progress=False)
    kag = tmp_path / "k"
    for split, dst in (("train", "Train Set"), ("valid", "Train Set"), ("test", "Test Set")):
        for a, b in (("images", "Images"), ("masks", "Ground-truths")):
            (kag / dst / b).mkdir(parents=True, exist_ok=True)
            for f in (sgseg / split / a).iterdir():
                shutil.copyfile(f, kag / dst / b / f.name)
    shutil.copyfile(sgseg / "text" / "train.csv", kag / "Train_text.csv")
    shutil.copyfile(sgseg / "text" / "test.csv", kag / "Test_text.csv")
    a = {(p.split, p.id, p.text) for p in layouts.read_layout("qata", sgseg)}
    b = {(p.split, p.id, p.text) for p in layouts.read_layout("qata", kag)}
    # train.csv = 8 train + 2 valid rows; int(0.8 * 10) = 8 -> the last 2 rows are val, as the valid folder says
    assert a == b and sum(s == "val" for s, _, _ in b) == 2


def test_mosmed_frames_masks_layout(tmp_path: Path) -> None:
    std = synthetic.generate(
        tmp_path / "m", "mosmed", n_train=6, n_val=2, n_test=2, image_size=32, seed=3, progress=False
    )
    flat = tmp_path / "f"
    for d in std.glob("* Set"):
        for a, b in (("Images", "frames"), ("Ground-truths", "masks")):
            (flat / b).mkdir(parents=True, exist_ok=True)
            for f in (d / a).iterdir():
                shutil.copyfile(f, flat / b / f.name)
    for c in std.glob("*.csv"):
        shutil.copyfile(c, flat / c.name)
    a = {(p.split, p.id, p.text) for p in layouts.read_layout("mosmed", std)}
    b = {(p.split, p.id, p.text) for p in layouts.read_layout("mosmed", flat)}
    assert a == b and all(t for _, _, t in b)


def test_folder_layout_with_text_csv_and_suffix_masks(tmp_path: Path) -> None:
    root = synthetic.generate(tmp_path / "f", "folder", n_train=4, n_val=1, n_test=1, image_size=32, progress=False)
    for m in sorted((root / "masks").iterdir()):
        m.rename(m.with_name(m.stem + "_mask.png"))  # BUSI style
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "captions.csv").write_text("image,text\n" + "".join(f'{n},"polyp {i}"\n' for i, n in enumerate(names)))
    pairs = layouts.read_layout("folder", root)
    assert len(pairs) == 6 and all(p.mask is not None and p.text.startswith("polyp") for p in pairs)

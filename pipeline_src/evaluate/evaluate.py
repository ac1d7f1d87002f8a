"""eval@<regime>: batch inference on the regime's evaluation split, metrics, per-sample CSV, plots.

    medref eval qata_10pct     # metrics/qata_10pct.json + eval/qata_10pct/

The evaluation split is ``test`` when the shards have test rows, else ``val`` (CONTRACT.md; the real
QaTa sample ships no test images). :func:`evaluate_predictor` is the inference+metrics loop over a
dataset (``distances=False`` skips the slow surface metrics); the per-image Dice/IoU rule it applies is
``pipeline_src/evaluate/metrics.py``'s.

Multi-class volumes (kind volumes): slices are re-stacked per case and scored in 3-D per class
(:func:`evaluate_volumes`); per_sample.csv then has one row per case x class and per_class.md the table.

eval/<regime>/ holds per_sample.csv, dice_hist.png, overlays/<kind>_<k>.png for the best, median and
worst samples, samples.npz (those samples' image, mask, prediction, text) so that ``report``
never needs a model, and MODEL.md: the model folder's card completed with these metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline_src import provenance
from pipeline_src.data.dataset import ShardDataset
from pipeline_src.data.shards import eval_split, load_manifest
from pipeline_src.errors import MedrefError
from pipeline_src.evaluate import metrics as M
from pipeline_src.evaluate import plots
from pipeline_src.evaluate.multiclass import CASE_COLUMNS, VolumeAccumulator, format_table
from pipeline_src.labels.table import read_labels
from pipeline_src.labels.text_parser import flip_text
from pipeline_src.models import card
from pipeline_src.models.alignment import alignment_score
from pipeline_src.models.folder import CARD, ModelFolder
from pipeline_src.models.task import BINARY, CLASS_INDEX, from_manifest
from pipeline_src.utils.io import atomic_dir, write_json
from pipeline_src.utils.stage import torch_device

OVERLAY_KINDS = ("best", "median", "worst")


def read_regions(labels_file: Path) -> dict[str, tuple[int, ...] | None]:
    """id -> the 6 text-named regions (None when the text names none we can parse)."""
    return {i: lab.regions for i, lab in read_labels(labels_file).items()}


def _region_matrix(ids: Sequence[str], regions: Mapping[str, tuple[int, ...] | None] | None) -> np.ndarray | None:
    if regions is None:
        return None
    unknown = (-1,) * len(M.REGIONS)
    return np.array([regions.get(i) or unknown for i in ids], dtype=np.int64).reshape(-1, len(M.REGIONS))


def evaluate_predictor(
    predictor: Any,
    dataset: Any,
    *,
    threshold: float = 0.5,
    batch_size: int = 32,
    min_component_size: int = 0,
    nsd_tolerance: float = 2.0,
    distances: bool = True,
    regions: Mapping[str, tuple[int, ...] | None] | None = None,
    alignment: bool = False,
    dispersion_stage: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    on_batch: Callable[..., None] | None = None,
) -> tuple[dict, Any]:
    """Run ``predictor.predict`` over ``dataset`` (items as ShardDataset's) and score the predictions.

    Returns ``(summary, per_sample)``: the summary dict of :func:`metrics.summarize` (plus ``alignment``
    when asked and the predictor has ``.embed``, and ``dispersion``: the feature dispersion of encoder stage
    ``dispersion_stage``'s pooled features over the whole set, one [N, C] matrix, so it does not depend on the
    batch size) and a pandas DataFrame with one row per sample.
    ``on_batch(ids, images, gts, probs, preds)`` sees every batch as numpy arrays (overlays, logging).
    """
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    device = getattr(predictor, "device", "cpu")
    acc = M.Accumulator(nsd_tolerance=nsd_tolerance, distances=distances)
    want_embed = alignment and callable(getattr(predictor, "embed", None))
    img_embs: list[np.ndarray] = []
    txt_embs: list[np.ndarray] = []
    pooled: list[Any] = []
    # Fixed order, no workers: per_sample.csv rows follow the dataset order, run to run.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            images = batch["image"].to(device)
            texts = list(batch["text"])
            probs = predictor.predict(images, texts).detach().float().cpu().numpy()
            preds = M.postprocess(probs, threshold, min_component_size)
            gts = batch["mask"].numpy()[:, 0].astype(np.uint8)
            acc.update(preds, gts, list(batch["id"]), texts)
            if want_embed:
                ie, te = predictor.embed(images, texts)
                if te is None:  # image-only models have no text tower: nothing to align
                    want_embed = False
                else:
                    img_embs.append(ie.detach().float().cpu().numpy())
                    txt_embs.append(te.detach().float().cpu().numpy())
            if dispersion_stage is not None and callable(getattr(predictor, "pooled_features", None)):
                pooled.append(predictor.pooled_features(images, texts, dispersion_stage))
            if on_batch is not None:
                on_batch(list(batch["id"]), batch["image"].numpy()[:, 0], gts, probs[:, 0], preds)
    rows = acc.rows
    reg = _region_matrix(acc.ids, regions)
    summary = M.summarize(rows, reg)
    if want_embed and img_embs:
        summary["alignment"] = alignment_score(np.concatenate(img_embs), np.concatenate(txt_embs), acc.texts, reg)
    if pooled:
        # imported here: torch's import cost (models.dispersive imports torch; this module's top does not)
        from pipeline_src.models.dispersive import feature_dispersion

        z = torch.cat(pooled)
        summary["dispersion"] = {"stage": dispersion_stage, "n": len(z), "channels": int(z.shape[1]),
                                 **feature_dispersion(z, pool=False)}
    df = pd.DataFrame({"id": acc.ids, "text": acc.texts, **rows})
    if reg is not None:
        df["text_regions"] = ["" if (r < 0).any() else "".join(map(str, r)) for r in reg]
    return summary, df


def evaluate_volumes(predictor: Any, dataset: Any, shards_dir: Path, batch_size: int = 32, progress: bool = True,
                     desc: str = "eval") -> tuple[dict, Any]:
    """Multi-class volumes: argmax of ``predictor.predict`` per slice, re-stacked per case, scored in 3-D
    (``multiclass.VolumeAccumulator``: per-class Dice and HD95 in mm per case, absent-class rules there).

    Returns (summary, per_case_class DataFrame). The summary holds ``mean_dice`` / ``mean_hd95`` (mean of
    the per-class means, Synapse "average DSC"), ``per_class``, ``per_case``, ``n`` (slices), ``n_cases``, and
    for the cross-dataset report table ``dice`` (= mean_dice) and ``dice_global`` (per class pooled over the
    cases' voxels, then the class mean). Distances are left out of the px-unit columns: HD95 here is in mm.
    """
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    labels = load_manifest(shards_dir)["labels"]
    acc = VolumeAccumulator(labels)
    device = getattr(predictor, "device", "cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            probs = predictor.predict(batch["image"].to(device), list(batch["text"]))
            if probs.shape[1] != len(labels):
                raise MedrefError(f"model predicts {probs.shape[1]} classes but {shards_dir} has {len(labels)}")
            acc.add(list(batch["case_id"]), batch["slice_index"].tolist(), probs.argmax(1).numpy(),
                    batch["mask"].numpy(), batch["spacing"].numpy())
    out = acc.compute()
    rows = out.pop("per_case_class")
    pooled = []
    for c in out["per_class"]:
        rs = [x for x in rows if x["class_index"] == c["class_index"] and x["dice"] is not None]
        den = sum(x["gt_voxels"] + x["pred_voxels"] for x in rs)
        if den:
            pooled.append(sum(x["dice"] * (x["gt_voxels"] + x["pred_voxels"]) for x in rs) / den)
    summary = {
        "n": len(dataset),
        **out,
        "dice": out["mean_dice"],
        "dice_global": float(np.mean(pooled)) if pooled else None,
        "hd95_unit": "mm",
        "labels": labels,
    }
    return summary, pd.DataFrame(rows, columns=list(CASE_COLUMNS))


class _TextsReplaced:
    """``dataset`` with item i's text replaced by ``texts[i]`` (images, masks and ids unchanged)."""

    def __init__(self, dataset: Any, texts: Sequence[str]):
        self.dataset, self.texts = dataset, list(texts)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "text": self.texts[i]}


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2): every image gets another image's text."""
    rng = np.random.default_rng(seed)
    while True:  # a uniform permutation is a derangement with probability ~1/e: a few draws
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def text_reliance(predictor: Any, dataset: Any, texts: Sequence[str], true_dice: float, *, seed: int,
                  **score) -> dict:
    """Dice with every image's text replaced by another image's (``derangement``) and with left/right swapped in
    each text (``flip_text``), beside the true-text Dice; ``drop_*`` = true minus perturbed. A model that reads the
    report loses Dice under both; an image-only model has nothing to lose (null, with the reason)."""
    keys = ("true_dice", "shuffled_dice", "swapped_dice", "drop_shuffled", "drop_swapped")
    if not getattr(getattr(predictor, "net", None), "uses_text", True):
        return {**dict.fromkeys(keys), "reason": "image-only model: it reads no text"}
    if len(texts) < 2:
        return {**dict.fromkeys(keys), "reason": "fewer than 2 evaluation images: no other text to swap in"}
    perm = derangement(len(texts), seed)
    swapped = [flip_text(t) for t in texts]

    def dice(new_texts: list[str]) -> float:
        summary, _ = evaluate_predictor(predictor, _TextsReplaced(dataset, new_texts), distances=False,
                                        progress=False, **score)
        return summary["dice"]

    shuffled_dice, swapped_dice = dice([texts[j] for j in perm]), dice(swapped)
    return {"true_dice": true_dice, "shuffled_dice": shuffled_dice, "swapped_dice": swapped_dice,
            "drop_shuffled": true_dice - shuffled_dice, "drop_swapped": true_dice - swapped_dice,
            "seed": seed, "n": len(texts), "n_swapped_texts": sum(a != b for a, b in zip(texts, swapped, strict=True))}


def select_overlays(per_sample, k: int) -> list[tuple[str, int, int]]:
    """(kind, rank, row index) of the best, median and worst samples by Dice.

    Samples whose ground truth is empty are skipped when any is not: an empty image scored 1.0 is
    not what a reader wants to see as "best".
    """
    if k <= 0 or per_sample.empty:
        return []
    cand = per_sample[per_sample["gt_pixels"] > 0]
    if cand.empty:
        cand = per_sample
    # per_sample has a RangeIndex (row = dataset position); a stable sort by (dice, id) breaks ties
    # the same way every run
    order = cand.sort_values(["dice", "id"], kind="mergesort").index.to_numpy()
    n = len(order)
    mid = n // 2
    picks = {
        "best": order[::-1][:k],
        "median": order[max(0, mid - k // 2) : max(0, mid - k // 2) + k],
        "worst": order[:k],
    }
    return [(kind, r, int(i)) for kind in OVERLAY_KINDS for r, i in enumerate(picks[kind])]


def _load_predictor(model_dir: Path, device: str):
    # Imported here: loading a model pulls in torch, timm and open_clip, which the rest of this module never needs.
    from pipeline_src.inference.predictor import load_predictor

    return load_predictor(model_dir, device=device)


def run(
    params, regime: str, model_dir: Path, shards_dir: Path, labels_file: Path, metrics_file: Path, out_dir: Path
) -> dict:
    """Evaluate ``models/<regime>`` and write ``metrics/<regime>.json`` and ``eval/<regime>/``."""

    model_dir, shards_dir, labels_file = Path(model_dir), Path(shards_dir), Path(labels_file)
    model = ModelFolder(model_dir)
    model.require_weights(regime)
    manifest = _shards_trained_on(model, shards_dir, regime)
    params.regime(regime)  # an unknown run: one clear error before the model loads
    device = torch_device("auto", threads=params.base.cpu_threads)
    split = eval_split(shards_dir)
    regions = read_regions(labels_file)
    predictor = _load_predictor(model_dir, device)
    dataset = ShardDataset(shards_dir, split)
    if len(dataset) == 0:
        raise MedrefError(f"{shards_dir}: the {split!r} split has no rows; nothing to evaluate")
    summary, write_outputs = EVALUATORS[from_manifest(manifest).name](predictor, dataset, params.eval, regime=regime,
                                                                      split=split, shards_dir=shards_dir,
                                                                      regions=regions)
    metrics = _metrics_file(params, regime, split, summary, model, shards_dir, labels_file, device)
    with atomic_dir(out_dir) as tmp:
        write_outputs(tmp)
        _write_card(tmp, model_dir, metrics)
    write_json(metrics_file, metrics)
    return metrics


def _score_images(predictor, dataset, ep, *, regime: str, split: str, shards_dir: Path, regions) -> tuple[dict, Any]:
    """Binary masks: per-image metrics (+ regions, alignment, dispersion, text reliance); the writer of
    per_sample.csv, the Dice histogram and the overlays."""
    # Keep predictions bit-packed (N*H*W/8 bytes) so overlays can be drawn after ranking.
    packed: list[np.ndarray] = []
    shape: list[tuple[int, int]] = []

    def keep(ids, images, gts, probs, preds):
        shape[:] = [preds.shape[1:]]
        packed.extend(np.packbits(p.astype(bool)) for p in preds)

    summary, per_sample = evaluate_predictor(
        predictor,
        dataset,
        threshold=ep.threshold,
        batch_size=ep.batch_size,
        min_component_size=ep.min_component_size,
        nsd_tolerance=ep.nsd_tolerance,
        distances=True,
        regions=regions,
        alignment=ep.alignment,
        dispersion_stage=ep.dispersion_stage,
        desc=f"eval {regime} ({split})",
        on_batch=keep,
    )

    if ep.text_reliance:
        summary["text_reliance"] = text_reliance(
            predictor, dataset, per_sample["text"].tolist(), summary["dice"], seed=ep.text_reliance_seed,
            threshold=ep.threshold, batch_size=ep.batch_size, min_component_size=ep.min_component_size)

    def write(tmp: Path) -> None:
        per_sample.to_csv(tmp / "per_sample.csv", index=False, float_format="%.6g")
        plots.dice_histogram(
            per_sample["dice"].to_numpy(),
            summary["dice_global"],
            tmp / "dice_hist.png",
            f"{regime}: per-image Dice on {split} (n={summary['n']})",
        )
        _write_overlays(tmp, dataset, per_sample, packed, shape, ep.overlays_per_kind, regime)

    return summary, write


def _score_cases(predictor, dataset, ep, *, regime: str, split: str, shards_dir: Path, regions) -> tuple[dict, Any]:
    """Multi-class volumes: per-case 3-D metrics per class; the writer of per_sample.csv (one row per case and
    class) and per_class.md."""
    summary, per_case = evaluate_volumes(predictor, dataset, shards_dir, ep.batch_size, desc=f"eval {regime}")

    def write(tmp: Path) -> None:
        per_case.to_csv(tmp / "per_sample.csv", index=False, float_format="%.6g")
        (tmp / "per_class.md").write_text(format_table(summary))

    return summary, write


# The evaluator of each task kind (pipeline_src/models/task.py): (summary, writer of the eval folder's files).
EVALUATORS: dict[str, Callable[..., tuple[dict, Callable[[Path], None]]]] = {
    BINARY: _score_images, CLASS_INDEX: _score_cases}


def _metrics_file(params, regime: str, split: str, summary: dict, model: ModelFolder, shards_dir: Path,
                  labels_file: Path, device: str) -> dict:
    """metrics/<regime>.json: the run, the scores (binary or multi-class ``summary``), the eval params and the
    provenance, in that order for both kinds."""
    r = params.regime(regime)
    return {
        "regime": regime, "dataset": r.dataset, "method": r.method, "fraction": r.fraction, "eval_split": split,
        **summary,
        "eval_params": params.eval.model_dump(mode="json"),
        "provenance": _provenance(params, regime, model, shards_dir, labels_file, device),
    }


def _write_card(out: Path, model_dir: Path, metrics: dict) -> None:
    """eval/<regime>/MODEL.md: train's card completed with these metrics (models/<regime>/ is train's output,
    never modified here)."""
    if (text := card.complete(model_dir, metrics)) is not None:
        (out / CARD).write_text(text)


def _shards_trained_on(model: ModelFolder, shards_dir: Path, regime: str) -> dict:
    """The shards' manifest, after refusing to score a model on shards other than the ones it was trained from
    (e.g. shards rebuilt at another image size since): its provenance records the shards digest, the manifest
    holds the current one."""
    # a model folder from elsewhere, without provenance, records nothing: the predictor's own checks still apply
    trained_on = model.trained_on_shards()
    manifest = load_manifest(shards_dir)
    now = manifest.get("digest")
    if trained_on is not None and now is not None and trained_on != now:
        raise MedrefError(
            f"{model.path}: trained on shards {trained_on[:12]}, but {shards_dir} now holds {now[:12]} (rebuilt since, "
            f"e.g. with another preprocess.image_size); re-train (`medref train {regime}` / `dvc repro train@{regime}`) "
            "or restore the shards it was trained on")
    return manifest


def _write_overlays(out: Path, dataset, per_sample, packed, shape, k: int, regime: str) -> None:
    picks = select_overlays(per_sample, k)
    if not picks:
        return
    h, w = shape[0]
    images, gts, preds, meta = [], [], [], []
    for kind, rank, i in picks:
        item = dataset[i]
        if item["id"] != per_sample["id"].iloc[i]:  # the dataset order must be the inference order
            raise RuntimeError(f"dataset row {i} is {item['id']!r}, inference saw {per_sample['id'].iloc[i]!r}")
        img = (item["image"].numpy()[0] * 255).round().astype(np.uint8)
        gt = item["mask"].numpy()[0].astype(np.uint8)
        pred = np.unpackbits(packed[i])[: h * w].reshape(h, w)
        row = per_sample.iloc[i]
        title = f"{regime} · {kind} #{rank + 1} · {row['id']} · Dice {row['dice']:.3f} · IoU {row['iou']:.3f}"
        plots.overlay(img, gt, pred, row["text"], title, out / "overlays" / f"{kind}_{rank}.png")
        images.append(img)
        gts.append(gt)
        preds.append(pred)
        meta.append((kind, rank, row["id"], row["text"], float(row["dice"])))
    _save_npz(
        out / "samples.npz",
        kind=np.array([m[0] for m in meta]),
        rank=np.array([m[1] for m in meta]),
        id=np.array([m[2] for m in meta]),
        text=np.array([m[3] for m in meta]),
        dice=np.array([m[4] for m in meta]),
        image=np.stack(images),
        mask=np.stack(gts),
        pred=np.stack(preds),
    )


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed with fixed zip timestamps: numpy stamps the current time, and the same inputs
    must give the same bytes (DESIGN.md). Readable with np.load."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in sorted(arrays.items()):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)


def _provenance(params, regime: str, model: ModelFolder, shards_dir: Path, labels_file: Path, device: str) -> dict:
    trained = model.train_record()  # what trained the model: its commit, params, data, weights
    return provenance.stage_block(params, ["base", "eval", f"regimes.{regime}"],
                                  {"model": model.model_file, "shards": shards_dir, "labels": labels_file},
                                  device=device, extra={"train": trained} if trained is not None else None)

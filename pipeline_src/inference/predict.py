"""``medref predict``: segment new images (with their report texts) with a trained model folder.

    medref predict qata_10pct --images scans/ --texts reports.csv --out predictions/
    medref predict models/qata_10pct --images a.png b.dcm --text "Unilateral pulmonary infection, one infected area, lower left lung." --out pred/ --probs --overlay --tta flip

Not a pipeline stage: it reads a model folder (``models/<regime>`` or any copy of one, e.g. pulled with
``dvc pull models/<regime>``), or an exported file with its sealed sidecar (``medref export``; refused when either
was changed after export, ``pipeline_src/inference/exported.py``), and images, and writes ``--out`` atomically (a
failure leaves nothing there; ``--out`` inside a DVC-tracked output such as ``models/<regime>/`` is refused):

  masks/mask_<stem>.png     {0,255} at the image's own size (the model-size mask, nearest-resized back)
  probs/prob_<stem>.png     with --probs: 16-bit probability map (value / 65535), bilinear-resized back
  overlays/<stem>.png       with --overlay: the image with the mask in red
  predictions.csv           id, image, text, lesion_pixels, lesion_fraction, regions (6 digits, REGIONS order,
                            empty for an empty mask), mean_confidence, model_sha256
  predict.json              the model folder, its digest, threshold and where it came from, TTA, device

An image is read like ``medref preprocess`` reads one (``pipeline_src/data/imageio.py``, DICOM included, with
the intensity rule the training shards used, from the model's config.json) and resized to the training size
the same way (bilinear), so an image of the test split gives eval's mask bit for bit. The threshold and
``min_component_size`` are eval's: ``--threshold``, else the regime's ``metrics/<regime>.json`` eval params,
else params.yaml's ``eval`` section, else the defaults.

Texts: ``--text`` for every image, or ``--texts`` a CSV / xlsx table read as ``medref download`` reads LViT's
(first column the image or mask file name, ``mask_<image name>`` or the image's stem, second the text).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline_src import paths
from pipeline_src.data.imageio import ANY_SIZE, IntensityRule, Limits, read_grey
from pipeline_src.data.layouts import IMAGE_EXTS, _lookup, clean_text, nfc, read_text_table
from pipeline_src.data.params import PreprocessParams
from pipeline_src.errors import MedrefError
from pipeline_src.inference.exported import load_exported
from pipeline_src.inference.onnx_engine import ENGINES, OnnxPredictor, export_of, usable
from pipeline_src.inference.outputs import refuse_dvc_output
from pipeline_src.inference.params import PostprocessParams
from pipeline_src.inference.postprocess import postprocess
from pipeline_src.inference.sidecar import SUFFIXES, sidecar_of
from pipeline_src.labels.mask_regions import mask_to_regions
from pipeline_src.models import card, folder
from pipeline_src.models.folder import CONFIG, EXPORT
from pipeline_src.models.task import from_channels
from pipeline_src.utils.io import atomic_dir, write_json
from pipeline_src.utils.stage import torch_device

DICOM_EXTS = (".dcm", ".dicom")
CSV_COLUMNS = ("id", "image", "text", "lesion_pixels", "lesion_fraction", "regions", "mean_confidence",
               "model_sha256")


@dataclass(frozen=True)
class Item:
    id: str
    path: Path
    text: str | None


def collect_images(args: list[str]) -> list[Path]:
    """Files as given (any extension: the content decides), folders' image and DICOM files (sorted, not recursive)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")
                           and q.suffix.lower() in IMAGE_EXTS + DICOM_EXTS)
            if not found:
                raise MedrefError(f"{p}: --images folder holds no image files ({', '.join(IMAGE_EXTS + DICOM_EXTS)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MedrefError(f"{p}: --images: no such file or folder")
    if not out:
        raise MedrefError("--images: no images given")
    return out


def _ids(images: list[Path]) -> list[str]:
    ids: dict[str, Path] = {}
    for im in images:
        i = nfc(im.stem)
        if i in ids:
            raise MedrefError(f"{im} and {ids[i]} would both be written as mask_{i}.png; rename one of them")
        ids[i] = im
    return list(ids)


def texts_for(images: list[Path], text: str | None, texts_file: Path | None) -> list[str | None]:
    """Each image's text: ``text`` for all, or its row of ``texts_file`` (download's key conventions), else None."""
    if text is not None:
        return [clean_text(text)[0]] * len(images)
    if texts_file is None:
        return [None] * len(images)
    if not texts_file.is_file():
        raise MedrefError(f"{texts_file}: --texts file not found")
    table = {k.lower(): t for k, t in read_text_table(texts_file)}
    found = [_lookup(table, im.name, f"mask_{im.name}", f"mask_{im.stem}.png", im.stem) for im in images]
    return [None if t is None else clean_text(t)[0] for t in found]  # as preprocess stores a text


def check_texts(items: list[Item], uses_text: bool, texts_file: Path | None) -> None:
    """A text-guided model needs a non-blank text per image; an image-only model ignores them."""
    if not uses_text:
        return
    missing = [it.path.name for it in items if it.text is None]
    if missing:
        where = (f"no row in {texts_file} (keys tried: the image name, mask_<image name>, the stem)" if texts_file
                 else "give --text \"...\" or --texts <csv>")
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MedrefError(f"this model is text-guided and needs a report text for each image; missing for "
                          f"{', '.join(missing[:3])}{more}: {where}")
    blank = [it.path.name for it in items if not it.text.strip()]
    if blank:
        raise MedrefError(f"empty report text for {', '.join(blank[:3])}: a text-guided model needs the sentence "
                          "that names where the lesion is")


def eval_settings(model_dir: Path, regime: str | None, project=None,
                  project_source: str = "params.yaml") -> tuple[dict, str]:
    """(decision keys, where they came from): the regime's metrics file, else the project params' ``eval`` section
    (``project``: the validated params the CLI loaded, or None), else the defaults."""
    if regime and Path(model_dir).resolve() == paths.model_dir(regime).resolve():
        mf = paths.metrics_file(regime)
        if mf.is_file():
            try:
                ep = json.loads(mf.read_text()).get("eval_params")
            except ValueError as e:
                raise MedrefError(f"{mf}: not valid JSON ({e}); restore it (`dvc checkout {mf}`) or pass "
                                  "--threshold") from e
            if ep:
                # only the keys predict uses: a metrics file from another version may hold keys this one lacks
                try:
                    return PostprocessParams.model_validate(
                        {k: ep[k] for k in PostprocessParams.model_fields if k in ep}).model_dump(), str(mf)
                except ValueError as e:
                    raise MedrefError(f"{mf}: eval_params are not valid ({' '.join(str(e).split())}); re-run "
                                      f"`medref eval {regime}` or pass --threshold") from None
    if project is not None:
        return project.eval.model_dump(), f"{project_source} (eval)"
    return PostprocessParams().model_dump(), "defaults (no metrics file, no params.yaml)"


def input_spec(config: dict, model_dir: Path, project=None, project_source: str = "params.yaml") -> tuple[int, object]:
    spec = config.get("input") or {}
    size = spec.get("image_size")
    if size is None:  # a model trained before config.json recorded its input
        if project is None:
            raise MedrefError(f"{model_dir}/{CONFIG} does not record the training image size (an older model) "
                              "and there is no params.yaml to take preprocess.image_size from")
        pp = project.preprocess
        print(f"[predict] {model_dir}/{CONFIG} has no input size: using {project_source}'s "
              f"preprocess.image_size {pp.image_size}", file=sys.stderr)
        return pp.image_size, IntensityRule(pp.intensity, tuple(pp.intensity_percentiles))
    # bits: the training dataset's bit depth (manifest.json intensity.bits), so a deep image maps as the training
    # images did; a model without one (8-bit training data, or older) maps a deep image by its own depth
    rule = IntensityRule(spec.get("intensity", "bits"), tuple(spec.get("intensity_percentiles", (1.0, 99.0))),
                         spec.get("bits"))
    return int(size), rule


def input_limits(config: dict, model_dir: Path):
    """The image size limits the training images were preprocessed with (config.json input), else the defaults."""
    spec, d = config.get("input") or {}, PreprocessParams()
    where = f"{model_dir}/{CONFIG} input" if "max_megapixels" in spec else "preprocess (defaults)"
    return Limits(int(spec.get("min_image_side", d.min_image_side)),
                  float(spec.get("max_megapixels", d.max_megapixels)), where)


def load_image(path: Path, rule, limits=None) -> np.ndarray:
    """uint8 [H, W] grey, as preprocess reads an image; one MedrefError naming the file otherwise."""
    try:
        return read_grey(path.read_bytes(), "image", rule, name=str(path), limits=limits or ANY_SIZE)
    except ValueError as e:
        raise MedrefError(f"{path}: {e}; accepted inputs are PNG/JPEG/TIFF/BMP (8 or 16 bit, grey, RGB or RGBA) "
                          "and uncompressed or decodable single-frame DICOM") from None
    except OSError as e:
        raise MedrefError(f"{path}: cannot read ({e.strerror or e})") from None


def to_model_size(img: np.ndarray, size: int) -> np.ndarray:
    """Preprocess's resize (pipeline_src/data/preprocess.py ``load_pair``): bilinear to size x size, uint8."""
    if img.shape == (size, size):
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _overlay(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    red = np.array([230.0, 30.0, 30.0], np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.55 * rgb[m] + 0.45 * red
    return np.rint(rgb).astype(np.uint8)


def _back(mask: np.ndarray, prob: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Model-size mask (nearest) and probabilities (bilinear) resized back to the image's own size."""
    if mask.shape == hw:
        return mask, prob
    size = (hw[1], hw[0])
    m = np.asarray(Image.fromarray(mask * np.uint8(255)).resize(size, Image.Resampling.NEAREST)) > 127
    p = np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    return m.astype(np.uint8), np.clip(p, 0.0, 1.0)


def _check_out(out_dir: Path, images: list[Path], texts_file: Path | None) -> None:
    """--out is replaced as a whole: refuse a folder that is not an earlier prediction, or that holds an input."""
    out = out_dir.resolve()
    for f in [*images, *([texts_file] if texts_file else [])]:
        if out == f.resolve() or out in f.resolve().parents:
            raise MedrefError(f"--out {out_dir}: holds the input {f}; the output folder is replaced as a whole, "
                              "choose a new folder")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / "predictions.csv").is_file())):
        raise MedrefError(f"--out {out_dir}: exists and is not an earlier `medref predict` output (no "
                          "predictions.csv); it would be replaced as a whole, so choose a new or empty folder")


def _onnx_export(model_dir: Path, engine: str, device: str):
    """(model.onnx, sidecar) when ``engine`` (auto | torch | onnx) and the folder say to run the ONNX export."""
    if engine not in ENGINES:
        raise MedrefError(f"--engine {engine}: known engines are {', '.join(ENGINES)}")
    if engine == "torch" or (engine == "auto" and device == "cuda"):
        return None
    found = export_of(model_dir)
    why = f"it has no {EXPORT} + {EXPORT}.json" if found is None else usable(model_dir, found[1])
    if why is None:
        return found
    if engine == "onnx":
        raise MedrefError(f"--engine onnx: {model_dir}: {why} (`medref export {model_dir} --format onnx --out "
                          f"{Path(model_dir) / EXPORT}`), or use --engine torch")
    if found is not None:  # auto: an export that cannot be used is said, not silently skipped
        print(f"[predict] {model_dir}/{EXPORT} not used: {why}; predicting with torch", file=sys.stderr)
    return None


def run(target: str, images: list[str], out_dir: Path, *, text: str | None = None, texts_file: Path | None = None,
        threshold: float | None = None, probs: bool = False, overlay: bool = False, tta: str | None = None,
        device: str = "auto", batch_size: int | None = None, project=None, project_source: str = "params.yaml",
        progress: bool = True, engine: str = "auto") -> dict:
    """Predict masks for ``images``; returns the predict.json summary. See the module docstring.

    ``project``: the project's validated params (``pipeline_src.params.Params``, loaded by the CLI from ``--params``
    or ./params.yaml, named ``project_source`` in messages), or None for a model folder outside any repository.
    From it come the eval section (when no metrics file applies), the region constants and the CPU thread count.
    """
    t0 = time.perf_counter()
    _check_options(text, threshold, batch_size)
    out_dir = Path(out_dir)
    # an exported file (`medref export`): its sealed sidecar is checked before anything else is read
    exported = Path(target) if Path(target).is_file() and Path(target).suffix in SUFFIXES else None
    model_dir = exported if exported is not None else folder.resolve(target)
    items = _items(images, out_dir, text, texts_file)
    src = _source(model_dir, exported, threshold, project, project_source)
    _start_engine(src, engine, device, project)
    check_texts(items, src.predictor.uses_text, texts_file)
    _say_which_model(src)
    out = _Outputs(probs, overlay, {} if project is None else project.pseudolabel.model_dump(), t0)
    with atomic_dir(out_dir) as tmp:
        rows = _predict_all(tmp, items, src, out, batch_size or int(src.ep.get("batch_size", 32)), tta, progress)
        _write_table(tmp / "predictions.csv", rows)
        summary = _summary(src, tta, len(rows))
        write_json(tmp / "predict.json", summary)
    print(f"[predict] {len(rows)} masks -> {out_dir}/masks/ (threshold {src.ep['threshold']} from {src.ep_source}); "
          f"first mask after {out.first_mask[0]:.2f} s, all after {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return summary


# ---- run's steps --------------------------------------------------------------------------------------------------

@dataclass
class _Source:
    """What predicts: the model (a folder or an exported file), the settings it is read and decided with, and the
    engine that runs it (set by :func:`_start_engine`)."""

    model_dir: Path
    exported: Path | None
    regime: str
    ep: dict  # eval's decision keys: threshold, min_component_size, batch_size
    ep_source: str
    size: int
    rule: object  # the training shards' IntensityRule
    limits: object
    predictor: object = None
    device: str = "cpu"
    numpy_io: bool = False  # the predictor takes and returns numpy arrays (onnxruntime), not torch tensors


@dataclass
class _Outputs:
    """What is written beside each mask, and when the first one was."""

    probs: bool
    overlay: bool
    region_params: dict
    t0: float
    first_mask: list[float] = field(default_factory=list)


def _check_options(text: str | None, threshold: float | None, batch_size: int | None) -> None:
    """The command line's own values, before any file is read."""
    if text is not None and not text.strip():
        raise MedrefError("--text is empty: give the report sentence that names where the lesion is")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise MedrefError(f"--threshold {threshold}: must be between 0 and 1 (exclusive)")
    if batch_size is not None and batch_size < 1:
        raise MedrefError(f"--batch-size {batch_size}: must be at least 1")


def _items(images: list[str], out_dir: Path, text: str | None, texts_file: Path | None) -> list[Item]:
    """The images with their ids and texts, after checking that --out may be replaced."""
    files = collect_images(images)
    ids = _ids(files)
    _check_out(out_dir, files, texts_file)
    refuse_dvc_output(out_dir)
    return [Item(i, f, t) for i, f, t in zip(ids, files, texts_for(files, text, texts_file), strict=True)]


def _source(model_dir: Path, exported: Path | None, threshold: float | None, project, project_source: str) -> _Source:
    """The model's config, its regime, eval's decision keys and the input spec, from the folder or the export."""
    predictor = None
    if exported is not None:
        predictor = load_exported(exported)  # CPU: TorchScript or onnxruntime, as the export was checked
        config = predictor.config
        regime = config.get("regime") or exported.stem
        ep, ep_source = predictor.eval_params, f"{sidecar_of(exported)} (export)"
    else:
        config = folder.ModelFolder(model_dir).config()
        regime = config.get("regime") or model_dir.name
        ep, ep_source = eval_settings(model_dir, regime, project, project_source)
    if threshold is not None:
        ep, ep_source = {**ep, "threshold": threshold}, "--threshold"
    size, rule = input_spec(config, model_dir, project, project_source)
    return _Source(model_dir, exported, regime, ep, ep_source, size, rule, input_limits(config, model_dir),
                   predictor=predictor)


def _start_engine(src: _Source, engine: str, device: str, project) -> None:
    """The predictor and its device: a folder's ONNX export on onnxruntime, an exported file as it was checked, or
    the folder's weights on torch (cpu or cuda)."""
    threads = project.base.cpu_threads if project is not None else None
    onnx = None if src.exported is not None else _onnx_export(src.model_dir, engine, device)
    if onnx is not None:  # onnxruntime on CPU, no torch import (pipeline_src/inference/onnx_engine.py)
        src.predictor, src.device, src.numpy_io = OnnxPredictor(src.model_dir, *onnx, threads=threads), "cpu", True
    elif src.exported is not None and src.predictor.numpy_io:  # an ONNX file on CLIP's BPE: no torch import
        src.device, src.numpy_io = "cpu", True
    else:
        # eval's thread count (base.cpu_threads): on CPU the thread count can change the float bits, and an image
        # of the eval split must get eval's mask
        src.device = torch_device("cpu" if src.exported is not None else device, threads=threads,
                                  unavailable="--device cuda: no CUDA device is available here; use --device cpu "
                                              "(or auto)")
        if src.exported is None:
            from pipeline_src.inference.predictor import load_predictor  # imported here: it loads torch and timm

            src.predictor = load_predictor(src.model_dir, device=src.device, bf16=src.device.startswith("cuda"))


def _say_which_model(src: _Source) -> None:
    """Where the model came from, and its card when it is the regime's own folder (eval's card applies)."""
    if src.exported is None:
        own = src.model_dir.resolve() == paths.model_dir(src.regime).resolve()
        print(f"[predict] {card.where(src.model_dir, paths.eval_dir(src.regime) if own else None)}", file=sys.stderr)
    else:
        print(f"[predict] exported model {src.exported}, checked against {sidecar_of(src.exported)}", file=sys.stderr)


def _predict_all(tmp: Path, items: list[Item], src: _Source, out: _Outputs, bs: int, tta: str | None,
                 progress: bool) -> list[dict]:
    """Every batch through the model into ``tmp``; the predictions.csv rows, in the input order.

    One helper thread reads the next batch and writes the last one while the network runs on this one (torch and
    onnxruntime release the GIL): the files cost no wall time of their own."""
    for sub in ("masks", *(["probs"] if out.probs else []), *(["overlays"] if out.overlay else [])):
        (tmp / sub).mkdir()
    threshold, min_size = src.ep["threshold"], int(src.ep.get("min_component_size", 0))
    batches = [items[i:i + bs] for i in range(0, len(items), bs)]
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    written = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(_read_batch, batches[0], src)
        for k, batch in enumerate(batches):
            originals, small = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(_read_batch, batches[k + 1], src)
            p = _probabilities(src, small, [it.text or "" for it in batch], tta)
            masks = postprocess(p, threshold, min_size)
            written.append(pool.submit(_write_batch, tmp, batch, originals, small, p[:, 0], masks, src, out))
            bar.update(len(batch))
        rows = [r for f in written for r in f.result()]
    bar.close()
    return rows


def _read_batch(batch: list[Item], src: _Source) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images as read (their own size) and at the model's size."""
    originals = [load_image(it.path, src.rule, src.limits) for it in batch]
    return originals, [to_model_size(im, src.size) for im in originals]


def _probabilities(src: _Source, small: list[np.ndarray], texts: list[str], tta: str | None) -> np.ndarray:
    """float32 [B, 1, H, W] foreground probabilities at the model's size; a multi-class model is refused."""
    x = np.stack(small).astype(np.float32)[:, None] * np.float32(1.0 / 255.0)
    if src.numpy_io:
        p = src.predictor.predict(x, texts, tta=tta)
    else:
        import torch  # the torch engine only: the onnx paths run without it

        p = src.predictor.predict(torch.from_numpy(x), texts, tta=tta).float().numpy()
    if not from_channels(p.shape[1]).predict_ok:
        raise MedrefError(f"{src.model_dir}: a {p.shape[1]}-class model; `medref predict` writes binary "
                          "masks (multi-class volume models are scored by `medref eval`)")
    return p


def _write_batch(tmp: Path, batch: list[Item], originals, small, prob: np.ndarray, masks: np.ndarray, src: _Source,
                 out: _Outputs) -> list[dict]:
    """Each image's mask (and probabilities, overlay) at its own size; its predictions.csv row."""
    rows = []
    for it, orig, sm, p, mask in zip(batch, originals, small, prob, masks, strict=True):
        big, big_p = _back(mask, p, orig.shape)
        (tmp / "masks" / f"mask_{it.id}.png").write_bytes(_png(big * np.uint8(255)))
        if not out.first_mask:
            out.first_mask.append(time.perf_counter() - out.t0)
        if out.probs:
            (tmp / "probs" / f"prob_{it.id}.png").write_bytes(_png(np.rint(big_p * 65535.0).astype(np.uint16)))
        if out.overlay:
            (tmp / "overlays" / f"{it.id}.png").write_bytes(_png(_overlay(orig, big)))
        reg = mask_to_regions(mask, sm, **out.region_params)
        conf = np.where(mask > 0, p, 1.0 - p)  # how sure each pixel's decision is
        rows.append({"id": it.id, "image": str(it.path), "text": it.text or "",
                     "lesion_pixels": int(big.sum()), "lesion_fraction": round(float(big.mean()), 6),
                     "regions": "" if reg is None else "".join(map(str, reg)),
                     "mean_confidence": round(float(conf.mean()), 6), "model_sha256": src.predictor.sha256})
    return rows


def _write_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _summary(src: _Source, tta: str | None, n: int) -> dict:
    """predict.json: the model, its digest, eval's decision keys and where they came from, the input, the engine."""
    pr = src.predictor
    return {"model_dir": str(src.model_dir), "regime": src.regime, "method": pr.method,
            "model_sha256": pr.sha256, "threshold": src.ep["threshold"],
            "min_component_size": int(src.ep.get("min_component_size", 0)), "eval_params_from": src.ep_source,
            "image_size": src.size, "intensity": src.rule.mode, "tta": tta, "device": src.device, "n": n,
            "engine": "onnx" if src.numpy_io or (src.exported is not None and pr.meta["format"] == "onnx")
            else "torch"}

"""``medref export``: a trained model folder as one TorchScript or ONNX file, plus the JSON of its preprocessing.

    medref export qata_10pct --format torchscript --out qata_10pct.pt      # + qata_10pct.pt.json
    medref export models/qata_10pct --format onnx --out qata_10pct.onnx    # + qata_10pct.onnx.json

The exported graph takes ``images`` float32 [B,1,H,W] in [0,1] (the grey image / 255, resized to the sidecar's
``input.image_size``; the model's own centring is inside the graph) and, for a text-guided model, ``tokens``
int64 [B,L] (the sidecar's tokenizer and ``context_length``), and returns ``probs`` [B,C,H,W] (sigmoid for
C = 1, softmax otherwise). The mask is ``probs > threshold`` with the sidecar's eval ``threshold`` (and
``min_component_size``), what ``medref predict`` writes. The batch axis is dynamic; H and W are the training
size. Both files are written atomically. The sidecar is sealed: it carries ``file_sha256`` (the exported file's
digest) and ``sidecar_sha256`` (its own), which ``medref predict <file>`` and ``exported.load_exported`` check, so
an edited sidecar or a replaced file is refused. ``--out`` inside a DVC-tracked output is refused.

ONNX: exported with TorchScript-based ``torch.onnx.export`` (``dynamo=False``), opset 17; the CLIP text tower
(open_clip's TextTransformer: argmax pooling at the end-of-text token, causal mask) exports and runs under
onnxruntime. A text tower that does not export (a ``local-dir:`` tower with custom code) fails with the
exporter's reason; TorchScript is then the format to use.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.inference.outputs import refuse_dvc_output
from pipeline_src.inference.predict import eval_settings, input_spec
from pipeline_src.inference.sidecar import seal, sidecar_of
from pipeline_src.models import folder
from pipeline_src.utils.io import atomic_file, sha256_bytes, write_json

OPSET = 17


def _wrapper(net, uses_text: bool):
    import torch

    # imported here: torch's import cost (the predictor imports torch; this module's top does not)
    from pipeline_src.inference.predictor import probabilities

    class Probs(torch.nn.Module):
        """images (+ tokens) -> probabilities: the part of ``Predictor.predict`` that is a graph."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
            return probabilities(self.net(images, tokens if uses_text else None)["logits"])

    return Probs().eval()


def sidecar(predictor, model_dir: Path, fmt: str, size: int, rule, eval_params: dict, eval_from: str) -> dict:
    """The preprocessing and decision rule a consumer of the exported file needs, read from the model folder."""
    cfg_model = (predictor.config.get("train") or {}).get("model") or predictor.model_config.model_dump(mode="json")
    weights = cfg_model.get("text_weights") or None
    text = None
    if predictor.uses_text:
        text = {
            "tokenizer": (f"open_clip.get_tokenizer({weights.removeprefix('local-dir:')!r})"
                          if (weights or "").startswith("local-dir:") else
                          "open_clip.tokenizer.SimpleTokenizer (CLIP BPE, lower-cased, cleaned)"),
            "context_length": int(cfg_model.get("context_length") or predictor.model_config.context_length),
            "pad_id": 0,
            "truncation": "to context_length, the end-of-text token kept last",
            "weights": weights,  # the tower's source: medref's loader rebuilds the tokenizer from it
        }
    return {
        "format": fmt,
        "model_dir": str(model_dir),
        "regime": predictor.config.get("regime") or model_dir.name,
        "method": predictor.method,
        "model_sha256": predictor.sha256,
        "inputs": {"images": "float32 [B,1,H,W]", **({"tokens": "int64 [B,context_length]"} if text else {})},
        "input": {
            "image_size": size,
            "channels": "grey (RGB/RGBA -> luminance, PIL 'L')",
            "intensity": {"rule": rule.mode, "percentiles": list(rule.percentiles), "bits": rule.bits,
                          "doc": "deeper than 8 bit -> uint8 (pipeline_src/data/imageio.py); 8-bit kept; bits: the "
                                 "training dataset's bit depth (null: each image by its own depth)"},
            "limits": {k: v for k, v in (predictor.config.get("input") or {}).items()
                       if k in ("min_image_side", "max_megapixels")},
            "resize": "PIL bilinear to image_size x image_size (uint8), as preprocess",
            "normalisation": "x = uint8 / 255 (the model centres (x - 0.5) / 0.25 itself)",
        },
        "text": text,
        "output": "probs [B,C,H,W]: sigmoid (C = 1) or softmax over classes",
        "threshold": eval_params["threshold"],
        "min_component_size": int(eval_params.get("min_component_size", 0)),
        "threshold_from": eval_from,
    }


def run(target: str, fmt: str, out: Path, project=None, project_source: str = "params.yaml") -> dict:
    """Export ``target`` (a regime or model folder) to ``out`` and ``out`` + ``.json``; returns the sidecar.

    ``project``, ``project_source``: the project's params, as for ``predict.run``."""
    import torch

    # imported here: torch's import cost (the predictor imports torch; this module's top does not)
    from pipeline_src.inference.predictor import load_predictor

    if fmt not in ("torchscript", "onnx"):
        raise MedrefError(f"--format {fmt}: known formats are torchscript and onnx")
    out = Path(out)
    refuse_dvc_output(out)
    model_dir = folder.resolve(target)
    predictor = load_predictor(model_dir, device="cpu")
    size, rule = input_spec(predictor.config, model_dir, project, project_source)
    ep, ep_from = eval_settings(model_dir, predictor.config.get("regime") or model_dir.name, project,
                                project_source)
    meta = sidecar(predictor, model_dir, fmt, size, rule, ep, ep_from)
    wrapper = _wrapper(predictor.net, predictor.uses_text)
    images = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    example = (images, predictor.tokenize(["upper left lung", "lower right lung"])) if predictor.uses_text else (
        images,)
    buf = io.BytesIO()
    # The tracer warns about every shape test in torch's attention code; for a fixed context length and image
    # size those are constants, and the batch axis is checked dynamic in tests/test_export.py.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save's deprecation notice
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, example, check_trace=False), buf)
        else:
            names = ["images", "tokens"][: len(example)]
            try:
                torch.onnx.export(wrapper, example, buf, dynamo=False, opset_version=OPSET, input_names=names,
                                  output_names=["probs"], dynamic_axes={n: {0: "batch"} for n in [*names, "probs"]})
            except Exception as e:  # the exporter raises many types; all mean "this graph does not export"
                raise MedrefError(f"{model_dir}: ONNX export failed ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:400]}); use --format torchscript") from e
    data = buf.getvalue()
    # sealed: the sidecar carries the file's sha256 and its own, which predict and load_exported check
    meta = seal(meta, sha256_bytes(data))
    with atomic_file(out, "wb") as f:
        f.write(data)
    write_json(sidecar_of(out), meta)
    print(f"[export] {model_dir} -> {out} ({fmt}, {len(buf.getvalue()) / 2**20:.1f} MiB) + {out}.json")
    return meta


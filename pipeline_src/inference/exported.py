"""An exported model (``medref export``) loaded for prediction, after its sealed sidecar is checked (sidecar.py).

    medref export qata_10pct --out qata.onnx                 # qata.onnx + qata.onnx.json (the sidecar)
    medref predict qata.onnx --images x.png --text "..." --out pred/     # predict checks the sidecar first
    from pipeline_src.inference.exported import load_exported
    m = load_exported("qata.onnx")                           # the same checks; m.predict(images, texts)

The sidecar is checked first (``sidecar.read_sidecar``: its own digest and the exported file's), so a hand-edited
sidecar or a replaced file is refused before anything is loaded.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.inference.onnx_engine import OnnxPredictor
from pipeline_src.inference.sidecar import read_sidecar
from pipeline_src.labels.text_parser import flip_text


class ExportedModel:
    """An exported file run as ``medref predict`` runs a model folder: ``predict(images, texts, tta)`` ->
    probabilities [B,C,H,W]; ``config`` holds the ``input`` block predict reads, ``eval_params`` the decision.
    An ONNX export with no text tower or CLIP's tokenizer runs without torch (``numpy_io``: numpy arrays in and out),
    as ``medref predict <file>.onnx`` does; others take and return torch tensors."""

    def __init__(self, exported: Path, meta: dict, device: str = "cpu"):
        self.path, self.meta, self.device = exported, meta, device
        self.method, self.sha256 = meta.get("method"), meta["file_sha256"]
        inp = meta["input"]
        self.config = {"regime": meta.get("regime"), "input": {
            "image_size": int(inp["image_size"]), "intensity": inp["intensity"]["rule"],
            "intensity_percentiles": list(inp["intensity"]["percentiles"]), "bits": inp["intensity"].get("bits"),
            **(inp.get("limits") or {})}}
        self.eval_params = {"threshold": float(meta["threshold"]),
                            "min_component_size": int(meta.get("min_component_size", 0))}
        self.text = meta.get("text")
        clip = bool(self.text) and str(self.text.get("tokenizer", "")).startswith("open_clip.tokenizer.SimpleTokenizer")
        # numpy in, numpy out, no torch import: an ONNX export whose text tower (if any) uses CLIP's BPE, which
        # onnx_engine tokenizes itself; a tower with its own tokenizer needs medref's (torch) tokenizer
        self.numpy_io = meta["format"] == "onnx" and (not self.text or clip)
        self._tok = None
        if self.text and not self.numpy_io:
            # imported here: torch's and timm's import cost (models.text imports both; the ONNX path needs neither)
            from pipeline_src.models.text import build_tokenizer, defines_architecture

            w = self.text.get("weights")
            self._tok = build_tokenizer(int(self.text["context_length"]), w if defines_architecture(w) else None)
        if meta["format"] == "torchscript":
            import torch

            self._run = torch.jit.load(str(exported), map_location=device).eval()
        else:  # the ONNX engine medref predict runs a model folder's model.onnx with, on this tokenizer
            tok = self._tok
            self._onnx = OnnxPredictor(exported.parent, exported, meta,
                                       tokenize=(lambda t: tok(t).numpy()) if tok is not None else None)

    @property
    def uses_text(self) -> bool:
        return bool(self.text)

    def _probs(self, images, texts):
        import torch

        with torch.no_grad():
            feeds = [images.to(self.device, torch.float32)]
            if self._tok is not None:
                feeds.append(self._tok(list(texts)).to(self.device))
            return self._run(*feeds).float()

    def predict(self, images, texts: list[str], tta: str | None = None):
        """Probabilities [B,C,H,W]: numpy in and out when ``numpy_io``, else torch tensors."""
        if self.numpy_io:
            return self._onnx.predict(images, texts, tta)
        if self.meta["format"] == "onnx":
            import torch

            return torch.from_numpy(self._onnx.predict(images.cpu().numpy(), texts, tta))
        probs = self._probs(images, texts)
        if tta == "flip":
            flipped = [flip_text(t) for t in texts] if self.uses_text else list(texts)
            probs = (probs + self._probs(images.flip(-1), flipped).flip(-1)) / 2
        elif tta is not None:
            raise MedrefError(f"predict: unknown test-time augmentation {tta!r}; known: flip")
        return probs.cpu()


def load_exported(exported: str | Path, device: str = "cpu") -> ExportedModel:
    """Check the sidecar and the file (``read_sidecar``), then load the file for prediction."""
    exported = Path(exported)
    return ExportedModel(exported, read_sidecar(exported), device)

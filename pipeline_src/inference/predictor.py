"""Inference: load a trained model folder and predict, for ``medref eval`` and ``medref predict``.

    from pipeline_src.inference.predictor import load_predictor
    p = load_predictor("models/qata_10pct")          # verifies model.pt against provenance.json's sha256
    probs = p.predict(images, texts)                 # [B,1,H,W] (binary) or [B,C,H,W] (multi-class)
    probs = p.predict(images, texts, tta="flip")     # mean with the mirrored view (its text's sides swapped)

The model folder (``models/<regime>/``, or a copy of one) is read through ``pipeline_src/models/folder.py``; the
architecture comes from model.pt (``model_config``), not from the current params.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline_src.errors import MedrefError
from pipeline_src.labels.text_parser import flip_text
from pipeline_src.models import build_model
from pipeline_src.models.folder import ModelFolder
from pipeline_src.models.params import ModelParams
from pipeline_src.models.task import from_channels


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The network's logits [B,C,H,W] as probabilities, in float32: sigmoid for one channel (binary), softmax over
    the channels otherwise (multi-class). The one rule: Predictor.predict and the exported graphs use it."""
    return from_channels(logits.shape[1]).probabilities(logits)


class Predictor:
    """Frozen network for evaluation: ``predict`` -> probabilities, ``embed`` -> (image_emb, text_emb).

    ``bf16``: run the forward under CUDA bfloat16 autocast (``medref predict`` on a GPU); ``eval`` keeps float32
    so its metrics do not depend on it. ``sha256`` is model.pt's digest (``predictions.csv`` names the model).
    ``config`` is the folder's config.json; its ``input`` block (image size, intensity rule) is how the shards the
    model was trained on were made, which ``medref predict`` repeats for a new image."""

    def __init__(self, net: torch.nn.Module, tokenize, config: dict, method: str, device: str = "cpu",
                 bf16: bool = False, sha256: str | None = None, model_config=None):
        self.net = net.to(device).eval()
        self.tokenize, self.config, self.method, self.device = tokenize, config, method, device
        self.bf16, self.sha256 = bf16 and str(device).startswith("cuda"), sha256
        self.model_config = model_config  # ModelParams: what export's sidecar describes (context length, tower)

    @property
    def uses_text(self) -> bool:
        return bool(self.net.uses_text)

    def _forward(self, images: torch.Tensor, texts: list[str]) -> dict:
        images = images.to(self.device, torch.float32)
        if len(texts) != len(images):
            raise MedrefError(f"predict: {len(images)} images but {len(texts)} texts")
        tokens = self.tokenize(list(texts)).to(self.device) if self.net.uses_text else None
        if self.bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.net(images, tokens)
        return self.net(images, tokens)

    def _probs(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return probabilities(self._forward(images, texts)["logits"])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, texts: list[str], tta: str | None = None) -> torch.Tensor:
        """[B,1,H,W] foreground probability (binary model) or [B,C,H,W] class probabilities (softmax, C > 1).

        ``tta="flip"``: the mean with the prediction on the mirrored images, mirrored back. A text-guided model
        reads the mirrored view with its text's left/right words swapped (the training flip's rule,
        ``text_parser.flip_text``): "left" names image-left, which the mirror moves to the right."""
        probs = self._probs(images, texts)
        if tta == "flip":
            flipped = [flip_text(t) for t in texts] if self.net.uses_text else list(texts)
            probs = (probs + self._probs(images.flip(-1), flipped).flip(-1)) / 2
        elif tta is not None:
            raise MedrefError(f"predict: unknown test-time augmentation {tta!r}; known: flip")
        return probs.cpu()

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor, texts: list[str], stage: int) -> torch.Tensor:
        """[B, C] global-average-pooled encoder features of ``stage`` (an index into the encoder's stages)."""
        return self._forward(images, texts)["feats"][stage].float().mean(dim=(2, 3)).cpu()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """L2-normalised pooled embeddings; text is None for an image-only model."""
        out = self._forward(images, texts)
        txt = out["txt_emb"]
        return F.normalize(out["img_emb"].float(), dim=-1).cpu(), (
            None if txt is None else F.normalize(txt.float(), dim=-1).cpu())


def load_predictor(model_dir: str | Path, device: str = "cpu", bf16: bool = False) -> Predictor:
    # imported here: timm's import cost (models.text imports the encoders; this module's top loads torch only)
    from pipeline_src.models.text import build_tokenizer, defines_architecture

    folder = ModelFolder(model_dir)
    blob, digest = folder.load_weights()  # sha-checked against provenance.json
    mcfg = ModelParams.model_validate(blob["model_config"])
    # The saved state dict holds every weight: do not re-read init files (absent on a collaborator's machine).
    # A local-dir: / hf-dir: / hf: text tower stays, because it also defines the tower's architecture and tokenizer.
    tw = mcfg.text_weights if defines_architecture(mcfg.text_weights) else None
    mcfg = mcfg.model_copy(update={"image_weights": None, "text_weights": tw})
    net = build_model(mcfg)
    net.load_state_dict(blob["state_dict"])
    config = folder.config()
    tok = build_tokenizer(mcfg.context_length, mcfg.text_weights)
    return Predictor(net, lambda texts: tok(texts), config, blob["method"], device, bf16=bf16, sha256=digest,
                     model_config=mcfg)

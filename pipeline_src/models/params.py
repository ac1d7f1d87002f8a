"""params.yaml ``train.model``: the architecture of a segmentation model (``pipeline_src.models.ARCHS``).

It lives with the models phase because a saved model folder carries it (``model.pt``'s ``model_config``): loading a
model for inference needs this schema and nothing of training. ``train.params.TrainParams`` nests it as ``model``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline_src.utils.schema import Strict


class ModelParams(Strict):
    # architecture, from pipeline_src.models.ARCHS; the method may force one (image_only, meddisseg)
    arch: Literal["textguided", "image_only", "meddisseg"] = "textguided"
    image_encoder: str = "resnet18"
    # local weights, never downloaded: a .pth/.pt/.bin/.safetensors file, a timm hub snapshot folder, or
    # hf-hub:timm/<name> resolved from the local Hugging Face cache (pipeline_src/models/encoders.py)
    image_weights: str | None = None
    # input normalisation of the grey image: centre ((x - 0.5) / 0.25), imagenet (ImageNet mean/std, channel mean),
    # auto (imagenet when the weights' pretrained config says ImageNet, else centre). Train saves the resolved value
    image_norm: Literal["auto", "centre", "imagenet"] = "auto"
    allow_partial_weights: bool = False  # accept a weights file that fills < 90 % of a tower's tensors
    out_indices: tuple[int, ...] = (1, 2, 3, 4)  # timm features_only stages fed to the decoder (strides 4..32)
    text_width: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    context_length: int = Field(32, ge=8)
    # null (random init), a local checkpoint file, local-dir:<open_clip folder>, or a transformers BERT-family model:
    # hf-dir:<folder> / hf:<owner>/<name> from the local HF cache (pipeline_src/models/text.py)
    text_weights: str | None = None
    # sentence feature: tower (the tower's own: CLIP EOT / transformers [CLS]); official (mean of hidden states 1, 2
    # and last over all context_length positions, as the Semi-MedRef / GuideDecoder code); masked (same, real tokens)
    text_pooling: Literal["tower", "official", "masked"] = "tower"
    text_head: Literal["linear", "mlp"] = "linear"  # pooled -> embed_dim; mlp = Linear-LayerNorm-GELU-Linear
    text_train: Literal["full", "frozen", "last_k"] = "full"  # which tower weights train (the head always does)
    text_train_k: int = Field(1, ge=1)  # last_k: how many final layers train
    embed_dim: int = Field(128, ge=8)  # shared image/text embedding size (ITCL, alignment score)
    # text-guided decoder (pipeline_src/models/fusion.py): official = the Semi-MedRef GuideDecoder (positional self-
    # and cross-attention at strides 32/16/8, MONAI up-blocks, encoder channels); medref = the earlier decoder
    # (cross-attention + MLP at all four scales, no positions, decoder_dim channels)
    decoder: Literal["official", "medref"] = "official"
    decoder_dim: int = Field(64, ge=8)  # medref decoder (and the meddisseg arch) only
    decoder_heads: int = Field(4, ge=1)  # medref decoder only
    # Med-DisSeg architecture switches (arch: meddisseg only): structure-sensitive attention encoder side
    # outputs, adaptive multi-scale calibration decoder
    ssa: bool = True
    amc: bool = True
    # output channels: 1 = binary (sigmoid); C = softmax over C classes, background included. Set by the train
    # stage from the shards manifest (a volumes dataset's n_classes), saved in model.pt; not a knob to tune
    n_classes: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelParams:
        # Checked here, not deep inside torch (an AssertionError / IndexError there named nothing the user set).
        if not self.out_indices:
            raise ValueError("out_indices: at least one encoder stage must feed the decoder, e.g. [1, 2, 3, 4]")
        if any(i < 0 for i in self.out_indices) or list(self.out_indices) != sorted(set(self.out_indices)):
            raise ValueError(f"out_indices: {list(self.out_indices)} must be distinct stage indices >= 0, shallow "
                             "to deep (increasing)")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_heads: {self.decoder_heads} does not divide decoder_dim {self.decoder_dim} "
                             "(cross-attention splits the channels evenly over the heads)")
        tw = self.text_weights or ""
        own_tower = not tw.startswith(("local-dir:", "hf-dir:", "hf:"))  # those towers bring their own sizes
        if own_tower and self.text_width % self.text_heads:
            raise ValueError(f"text_heads: {self.text_heads} does not divide text_width {self.text_width}")
        if self.text_pooling != "tower" and not tw.startswith(("hf-dir:", "hf:")):
            raise ValueError(f"text_pooling: {self.text_pooling!r} pools a transformers tower's hidden states; set "
                             "text_weights to hf-dir:<folder> or hf:<owner>/<name> (or use tower)")
        return self


# What a run's train stage depends on besides code and data, for the engines' dep lists (workflow/grid.yaml,
# the Snakemake train rule): a run that reads no weights file names this placeholder, so that DVC, which cannot
# leave a dep slot empty, depends on a constant file instead.
NO_WEIGHTS = "workflow/no-weights.txt"


def weight_deps(model: dict, method_arch: str | None = None) -> dict[str, str]:
    """``{"image_weights_dep", "text_weights_dep"}``: the file or folder each ``train.model.*_weights`` param string
    names (``hf:`` / ``hf-hub:`` -> its folder in the local Hugging Face cache; ``hf-dir:`` / ``local-dir:`` -> the
    folder), or NO_WEIGHTS. From the strings alone, so the grid is written before any weights exist (a
    ``pretrain_text`` output). ``method_arch`` is the architecture a method forces (image-only reads no text)."""

    def where(spec: str | None) -> str:
        if not spec:
            return NO_WEIGHTS
        for prefix in ("hf:", "hf-hub:"):
            if spec.startswith(prefix):
                from huggingface_hub import constants

                return f"{constants.HF_HUB_CACHE}/models--{spec.removeprefix(prefix).replace('/', '--')}"
        for prefix in ("hf-dir:", "local-dir:"):
            spec = spec.removeprefix(prefix)
        return spec

    arch = method_arch or model.get("arch", "textguided")
    return {"image_weights_dep": where(model.get("image_weights")),
            "text_weights_dep": where(model.get("text_weights") if arch == "textguided" else None)}

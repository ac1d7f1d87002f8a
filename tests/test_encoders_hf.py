"""Image encoder weights as users have them: timm .pth / .bin / .safetensors files and hub-cache snapshots,
loaded offline into the grey-input encoder exactly as timm's own loader does; partial loads refused.

    .venv/bin/python -m pytest -q tests/test_encoders_hf.py
"""

from __future__ import annotations

import pytest
import timm
import torch

from pipeline_src.errors import MedrefError
from pipeline_src.models.encoders import IMAGENET_MEAN, IMAGENET_STD, ImageEncoder, resolve_image_norm
from tests.hf_fixtures import hub_cache_snapshot

NAME = "test_convnext"  # timm's own tiny test model: a ConvNeXt, 0.27 M parameters
REPO_ID = "timm/test_convnext.medref_in1k"
OUT = (0, 1, 2, 3)  # a ConvNeXt has 4 stages (strides 4..32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random RGB ConvNeXt saved every way a user may have it."""
    from safetensors.torch import save_file
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    m = timm.create_model(NAME, pretrained=False)
    sd = m.state_dict()
    save_file(sd, root / "w.safetensors")
    torch.save(sd, root / "w.pth")
    torch.save({"state_dict": sd}, root / "w.bin")
    m.pretrained_cfg = {**m.pretrained_cfg, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    save_for_hf(m, root / "hf", safe_serialization=True)
    cache = root / "hub"
    snap = hub_cache_snapshot(cache, REPO_ID, {f.name: f for f in (root / "hf").iterdir()})
    return root, cache, snap


def _feats(enc, x):
    with torch.no_grad():
        return enc.eval()(x)


def _timm_own(**kw):
    return timm.create_model(NAME, features_only=True, in_chans=1, pretrained=True, **kw)


def test_files_load_as_timms_own_loader(weights):
    root = weights[0]
    x = torch.rand(2, 1, 64, 64)
    ref = _feats(_timm_own(pretrained_cfg_overlay={"file": str(root / "w.safetensors")}), x)
    for f in ("w.safetensors", "w.pth", "w.bin"):
        got = _feats(ImageEncoder(NAME, str(root / f), OUT), x)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the grey stem is the RGB stem summed (timm's adapt_input_conv), not a random one
    enc = ImageEncoder(NAME, str(root / "w.safetensors"), OUT)
    rgb = timm.create_model(NAME, pretrained=False)
    rgb.load_state_dict(torch.load(root / "w.pth", weights_only=True))
    torch.testing.assert_close(enc.body.stem_0.weight, rgb.stem[0].weight.sum(1, keepdim=True))


def test_hub_cache_snapshot_loads_offline_as_timm_does(weights, monkeypatch, tmp_path):
    from huggingface_hub import constants

    root, cache, snap = weights
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    x = torch.rand(2, 1, 64, 64)
    ref = _feats(timm.create_model(f"hf-hub:{REPO_ID}", features_only=True, in_chans=1, pretrained=True), x)
    for spec in (f"hf-hub:{REPO_ID}", str(snap)):
        got = _feats(ImageEncoder(NAME, spec, OUT), x)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ImageNet weights (their pretrained config says so) get ImageNet normalisation under auto; files do not
    assert resolve_image_norm("auto", f"hf-hub:{REPO_ID}") == "imagenet"
    assert resolve_image_norm("auto", str(root / "w.safetensors")) == "centre"
    assert resolve_image_norm("auto", None) == "centre"
    assert resolve_image_norm("centre", f"hf-hub:{REPO_ID}") == "centre"
    with pytest.raises(MedrefError, match=r"holds timm 'test_convnext' weights .*, but train.model.image_encoder is 'resnet18'"):
        ImageEncoder("resnet18", f"hf-hub:{REPO_ID}")
    with pytest.raises(MedrefError, match=r"timm/absent is not in the local Hugging Face cache: .*models--timm--absent"):
        ImageEncoder(NAME, "hf-hub:timm/absent", OUT)
    hub_cache_snapshot(tmp_path, "timm/noweights", {"config.json": snap / "config.json"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MedrefError, match=r"noweights under .*snapshots lacks model\.safetensors or pytorch_model\.bin"):
        ImageEncoder(NAME, "hf-hub:timm/noweights", OUT)


def test_a_partial_match_is_refused_unless_asked_for(weights, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(weights[0] / "w.safetensors")
    half = dict(list(sd.items())[: len(sd) // 2])
    save_file(half, tmp_path / "half.safetensors")
    with pytest.raises(MedrefError, match=r"image_weights: .*half\.safetensors: only \d+ of the encoder's"):
        ImageEncoder(NAME, str(tmp_path / "half.safetensors"), OUT)
    ImageEncoder(NAME, str(tmp_path / "half.safetensors"), OUT, allow_partial=True)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MedrefError, match=r"junk\.safetensors is not a readable safetensors file"):
        ImageEncoder(NAME, str(tmp_path / "junk.safetensors"), OUT)
    with pytest.raises(MedrefError, match=r"image_weights: file .*nope\.pth not found"):
        ImageEncoder(NAME, str(tmp_path / "nope.pth"), OUT)


def test_imagenet_normalisation_changes_the_model_input(weights, monkeypatch):
    from huggingface_hub import constants

    from pipeline_src.models import build_model
    from pipeline_src.models.params import ModelParams

    _, cache, _ = weights
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cfg = ModelParams(arch="image_only", image_encoder=NAME, image_weights=f"hf-hub:{REPO_ID}", decoder_dim=16,
                      decoder_heads=2, embed_dim=16, out_indices=OUT)
    assert build_model(cfg).norm == "imagenet"
    assert build_model(cfg.model_copy(update={"image_norm": "centre"})).norm == "centre"

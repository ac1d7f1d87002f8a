"""Test-only helpers around the dispersive loss: a module wrapper and forward hooks on encoder stages.

They moved out of pipeline_src/models/dispersive.py because no pipeline code uses them (training reads the
stage from the model's ``feats`` output); the tests use them to check the loss on captured stage features.

    from tests.dispersive_hooks import DispersiveLoss, hook_stage, stage_for_reduction
"""

from __future__ import annotations

from torch import Tensor, nn

from pipeline_src.errors import MedrefError
from pipeline_src.models.dispersive import VARIANTS, Variant, dispersive_loss


class DispersiveLoss(nn.Module):
    """``dispersive_loss`` with its settings bound; no parameters, so it never enters the state dict."""

    def __init__(
        self,
        variant: Variant = "infonce_l2",
        tau: float = 0.5,
        eps: float = 1.0,
        include_diagonal: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise MedrefError(f"dispersive loss: variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.tau, self.eps, self.include_diagonal = variant, tau, eps, include_diagonal

    def forward(self, z: Tensor) -> Tensor:
        return dispersive_loss(z, self.variant, self.tau, self.eps, self.include_diagonal)

    def extra_repr(self) -> str:
        return f"variant={self.variant}, tau={self.tau}, eps={self.eps}, include_diagonal={self.include_diagonal}"

    @staticmethod
    def hook(model: nn.Module, stage: int | str = 3) -> StageFeatureHook:
        """Capture a stage's output on every forward of ``model`` (see ``hook_stage``)."""
        return hook_stage(model, stage)


# ---------------------------------------------------------------------------------------------------------------
# Capturing a stage's features during the normal forward pass
# ---------------------------------------------------------------------------------------------------------------


class StageFeatureHook:
    """Forward hook that keeps the latest output of one module (``.features``).

    Use as a context manager or call ``remove()``. The tensor is kept with its graph (the loss needs gradients);
    ``clear()`` drops it after the step so the graph is not kept alive into the next one.
    """

    def __init__(self, module: nn.Module, name: str = "") -> None:
        self.name = name
        self.features: Tensor | None = None
        self._handle = module.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs: tuple, output: Tensor | tuple | list) -> None:
        # timm blocks return tensors; some wrappers return tuples: the first element is the feature map.
        self.features = output[0] if isinstance(output, tuple | list) else output

    def pop(self) -> Tensor:
        """The captured features; an error (not None) when the hooked module did not run."""
        if self.features is None:
            raise MedrefError(f"dispersive loss: stage {self.name!r} produced no features in the last forward pass")
        z, self.features = self.features, None
        return z

    def clear(self) -> None:
        self.features = None

    def remove(self) -> None:
        self._handle.remove()
        self.features = None

    def __enter__(self) -> StageFeatureHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _timm_feature_net(model: nn.Module) -> nn.Module | None:
    """The first sub-module that carries timm's ``feature_info`` (a features_only encoder)."""
    for m in model.modules():
        info = getattr(m, "feature_info", None)
        if info is not None and hasattr(info, "module_name"):
            return m
    return None


def stage_for_reduction(model: nn.Module, reduction: int = 16) -> int:
    """Index of the timm feature stage with the given stride (16 = the official ResNet layer3 choice).

    Lets a params file say "the stride-16 stage" for any encoder: ResNets have 5 feature stages (stride 2..32),
    ConvNeXt/Swin 4 (stride 4..32), so a fixed index means different depths in different backbones.
    """
    net = _timm_feature_net(model)
    if net is None:
        raise MedrefError("dispersive loss: the model has no timm features_only encoder (no feature_info)")
    reductions = list(net.feature_info.reduction())
    if reduction not in reductions:
        raise MedrefError(f"dispersive loss: no encoder stage with stride {reduction}; strides are {reductions}")
    return reductions.index(reduction)


def hook_stage(model: nn.Module, stage: int | str = 3) -> StageFeatureHook:
    """Hook a stage of ``model``'s timm features_only encoder.

    ``stage``: an int indexes the encoder's feature stages (``feature_info``; negatives count from the end;
    3 = ResNet layer3, the official choice); a str is a dotted sub-module path of ``model``.
    """
    if isinstance(stage, str):
        try:
            return StageFeatureHook(model.get_submodule(stage), stage)
        except AttributeError as e:
            raise MedrefError(f"dispersive loss: model has no sub-module {stage!r}") from e
    net = _timm_feature_net(model)
    if net is None:
        raise MedrefError("dispersive loss: an int stage needs a timm features_only encoder (no feature_info found)")
    names = list(net.feature_info.module_name())
    if not -len(names) <= stage < len(names):
        raise MedrefError(f"dispersive loss: stage {stage} out of range; the encoder has {len(names)} stages {names}")
    name = names[stage]
    # FeatureListNet flattens nested names ("stages.2" -> "stages_2"); try both spellings.
    for candidate in (name, name.replace(".", "_")):
        try:
            return StageFeatureHook(net.get_submodule(candidate), name)
        except AttributeError:
            continue
    raise MedrefError(f"dispersive loss: cannot find encoder module {name!r} for stage {stage}")


# ---------------------------------------------------------------------------------------------------------------
# The falsification probe: does the loss actually disperse the features?
# ---------------------------------------------------------------------------------------------------------------

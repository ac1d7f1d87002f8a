"""Typed, validated view of params.yaml.

Each phase package owns the model of its own section (``pipeline_src/<phase>/params.py``);
this module composes them, checks cross-references (a regime's dataset and method) and
fails with one clear message naming the key before any work starts.
"""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from pipeline_src.data.params import DatasetParams, PreprocessParams, SplitParams
from pipeline_src.errors import MedrefError
from pipeline_src.evaluate.params import EvalParams, ReportParams
from pipeline_src.labels.params import PseudolabelParams
from pipeline_src.train.params import PretrainTextParams, TrainParams

DEFAULT_PARAMS = Path("params.yaml")

# Training methods, by name. The implementations live in pipeline_src/train/methods.py;
# the names are listed here so params can be validated without importing torch.
METHODS = ("supervised", "image_only", "semi_medref", "mean_teacher", "cutmix_ssl", "meddisseg")


class ParamsError(MedrefError):
    """A params.yaml problem; the message names the file and key."""


class BaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 1234
    # CPU intra-op threads for train and eval. A tracked param because on CPU the thread count
    # changes the summation order, hence the weights' bits: pinning it makes DVC (which leaves
    # OMP_NUM_THREADS alone) and Snakemake (which sets it to the rule's threads) agree bit for bit.
    cpu_threads: int = Field(2, ge=1)


class RegimeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    fraction: float = Field(gt=0.0, le=1.0)
    method: str = "supervised"
    # deep-merged over the ``train`` section for this regime only (ablations)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; known: {', '.join(METHODS)}")
        return v


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    base: BaseParams = BaseParams()
    datasets: dict[str, DatasetParams]
    preprocess: PreprocessParams = PreprocessParams()
    pseudolabel: PseudolabelParams = PseudolabelParams()
    split: SplitParams = SplitParams()
    regimes: dict[str, RegimeParams]
    train: TrainParams = TrainParams()
    pretrain_text: PretrainTextParams = PretrainTextParams()
    eval: EvalParams = EvalParams()
    report: ReportParams = ReportParams()
    # the file these params were read from, for error messages (set by load(); not a param)
    _source: str = PrivateAttr(default=str(DEFAULT_PARAMS))

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; {self._source} datasets: {', '.join(self.datasets)}")
        return self.datasets[name]

    def regime(self, name: str) -> RegimeParams:
        if name not in self.regimes:
            raise ParamsError(f"unknown regime {name!r}; {self._source} regimes: {', '.join(self.regimes)}")
        return self.regimes[name]

    def train_for(self, regime: str) -> TrainParams:
        """The ``train`` section with the regime's overrides merged in (validated)."""
        r = self.regime(regime)
        merged = deep_merge(self.train.model_dump(), r.train)
        try:
            return TrainParams.model_validate(merged)
        except ValidationError as e:
            raise ParamsError(f"regimes.{regime}.train: {_fmt(e)}") from e  # load() names the file


def deep_merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, recursing into dicts both have; neither input is modified or shared."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _fmt(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice: PyYAML keeps the last value,
    while DVC rejects the file, so the two would read different params from it."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line} (first on line {seen[key]})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_raw(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    if not path.is_file():
        raise ParamsError(f"{path}: not a file; --params names a params YAML file such as params.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}); save the params file as UTF-8") from e
    except OSError as e:
        raise ParamsError(f"{path}: cannot read the params file ({e.strerror})") from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:  # one line: where, and what
        where = f" line {e.problem_mark.line + 1}" if e.problem_mark else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ParamsError(f"{path}:{where}: not valid YAML: {what}") from e
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at top level")
    return data


def load(path: str | Path = DEFAULT_PARAMS) -> Params:
    raw = load_raw(path)
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path}: {_fmt(e)}") from e
    params._source = str(path)
    for name in params.pretrain_text.datasets:
        if name not in params.datasets:
            raise ParamsError(f"{path}: pretrain_text.datasets: unknown dataset {name!r}")
    for name, r in params.regimes.items():
        if r.dataset not in params.datasets:
            raise ParamsError(f"{path}: regimes.{name}.dataset: unknown dataset {r.dataset!r}")
        try:
            params.train_for(name)  # validates overrides early
        except ParamsError as e:
            raise ParamsError(f"{path}: {e}") from e
    return params

"""Typed, validated view of params.yaml.

Each phase package owns the model of its own section (``pipeline_src/<phase>/params.py``);
this module composes them, checks cross-references (a regime's dataset and method) and
fails with one clear message naming the key before any work starts.
"""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline_src import numerics
from pipeline_src.aggregate.params import ReportParams
from pipeline_src.data.params import DatasetParams, PreprocessParams, SplitParams
from pipeline_src.errors import MedrefError
from pipeline_src.evaluate.params import EvalParams
from pipeline_src.labels.params import PseudolabelParams
from pipeline_src.train.params import PretrainTextParams, TrainParams
from pipeline_src.utils.schema import Strict, validation_message

DEFAULT_PARAMS = Path("params.yaml")

# Training methods, by name. The implementations live in pipeline_src/train/methods.py;
# the names are listed here so params can be validated without importing torch.
METHODS = ("supervised", "image_only", "semi_medref", "mean_teacher", "cutmix_ssl", "meddisseg")
# the architecture a method forces over train.model.arch (the Method classes' ``arch``; tests/test_train checks)
FORCED_ARCH = {"image_only": "image_only", "meddisseg": "meddisseg"}


class ParamsError(MedrefError):
    """A params.yaml problem; the message names the file and key."""


class BaseParams(Strict):
    seed: int = 1234
    # CPU intra-op threads for train and eval. A tracked param because on CPU the thread count
    # changes the summation order, hence the weights' bits: pinning it makes DVC (which leaves
    # OMP_NUM_THREADS alone) and Snakemake (which sets it to the rule's threads) agree bit for bit.
    cpu_threads: int = Field(2, ge=1)
    # CPU kernels: "native" (the CPU's widest ISA: bits reproduce on the same CPU kind only) or "portable" (oneDNN,
    # ATen and oneMKL capped at AVX2: the same bits on any x86-64 CPU). Tracked: it changes the bits. It must act
    # before torch loads, so pipeline_src/numerics.py reads it from params.yaml at import; see there.
    cpu_numerics: Literal["native", "portable"] = numerics.DEFAULT


def _known_method(v: str) -> str:
    if v not in METHODS:
        raise ValueError(f"unknown method {v!r}; known: {', '.join(METHODS)}")
    return v


def pct_name(fraction: float) -> str:
    """0.1 -> '10pct', 0.005 -> '0.5pct': the fraction part of split and run names."""
    return f"{round(fraction * 100, 6):g}pct"


def split_name(dataset: str, fraction: float) -> str:
    """The labelled set every run at (dataset, fraction) trains on: ``data/splits/<name>.json``."""
    return f"{dataset}_{pct_name(fraction)}"


class RegimeParams(Strict):
    """One run (a cell of a study grid, or a run named under ``regimes:``)."""

    dataset: str
    fraction: float = Field(gt=0.0, le=1.0)
    method: str = "supervised"
    # deep-merged over the ``train`` section for this run only (variants, ablations)
    train: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0)  # training seed = base.seed + seed; the labelled set does not depend on it
    study: str | None = None    # the study that declared it (grid runs), for the aggregation stage
    variant: str | None = None  # the method or variant name the study lists

    _method = field_validator("method")(_known_method)

    @property
    def split(self) -> str:
        return split_name(self.dataset, self.fraction)


class VariantParams(Strict):
    """A named variant: a method plus ``train:`` overrides (``semi_medref-no_posaug``)."""

    method: str
    train: dict[str, Any] = Field(default_factory=dict)
    _method = field_validator("method")(_known_method)


class StudyAxes(Strict):
    fractions: list[float] | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None


class StudyParams(Strict):
    """dataset x fractions x methods (or variants) x seeds; ``full:`` holds the axes of ``study_size: full``."""

    dataset: str
    headline: str | None = None         # the method/variant whose runs are named without it (qata_10pct)
    fractions: list[float] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)  # study-wide overrides, under each variant's
    baseline: str = "supervised"        # paired deltas: against this, and against the best of ssl_baselines
    ssl_baselines: list[str] = Field(default_factory=lambda: ["mean_teacher", "cutmix_ssl"])
    bootstrap: int = Field(1000, ge=0)  # replicates of the paired CIs over test images (seeded with base.seed)
    full: StudyAxes = StudyAxes()


STUDY_SIZES = ("demo", "full")


def study_axes(study: dict[str, Any], size: str) -> tuple[list[float], list[str], list[int]]:
    full = (study.get("full") or {}) if size == "full" else {}
    return (list(full.get("fractions") or study["fractions"]), list(full.get("methods") or study["methods"]),
            list(full.get("seeds") or study.get("seeds") or [0]))


def run_name(dataset: str, fraction: float, variant: str, seed: int, headline: str | None) -> str:
    """``<dataset>_<pct>pct[-<variant>][-s<seed>]``: the headline variant and seed 0 are left out."""
    name = split_name(dataset, fraction)
    if variant != headline:
        name += f"-{variant}"
    return name + (f"-s{seed}" if seed else "")


def expand_grid(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs of every study in a raw params mapping, in declaration order: {run name: run spec}.

    Pure Python on plain dicts, so the Snakefile expands the grid with this same function and
    ``medref grid`` writes the same expansion for DVC (workflow/grid.yaml)."""
    size = raw.get("study_size", "demo")
    variants = raw.get("variants") or {}
    runs: dict[str, dict[str, Any]] = {}
    for sname, study in (raw.get("studies") or {}).items():
        fractions, methods, seeds = study_axes(study, size)
        for fraction in fractions:
            for variant in methods:
                v = variants.get(variant) or {"method": variant}
                train = deep_merge(study.get("train") or {}, v.get("train") or {})
                for seed in seeds:
                    name = run_name(study["dataset"], fraction, variant, seed, study.get("headline"))
                    spec = {"dataset": study["dataset"], "fraction": fraction, "method": v["method"],
                            "train": train, "seed": seed, "study": sname, "variant": variant}
                    if name in runs and runs[name] != spec:
                        raise ParamsError(f"studies.{sname}: run {name!r} is also declared by studies."
                                          f"{runs[name]['study']} with other settings; give the studies of one "
                                          "dataset the same headline and variants")
                    runs[name] = spec
    return runs


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=(cached_property,))

    base: BaseParams = BaseParams()
    datasets: dict[str, DatasetParams]
    preprocess: PreprocessParams = PreprocessParams()
    pseudolabel: PseudolabelParams = PseudolabelParams()
    split: SplitParams = SplitParams()
    study_size: str = "demo"
    variants: dict[str, VariantParams] = Field(default_factory=dict)
    studies: dict[str, StudyParams] = Field(default_factory=dict)
    # every run: the studies' grid runs (expanded by the validator below) plus runs named here directly
    regimes: dict[str, RegimeParams] = Field(default_factory=dict)
    train: TrainParams = TrainParams()
    pretrain_text: PretrainTextParams = PretrainTextParams()
    eval: EvalParams = EvalParams()
    report: ReportParams = ReportParams()
    # the file these params were read from, for error messages (set by load(); not a param)
    _source: str = PrivateAttr(default=str(DEFAULT_PARAMS))

    @model_validator(mode="before")
    @classmethod
    def _expand_studies(cls, raw: Any) -> Any:
        """Put the studies' runs into ``regimes``: every stage addresses a run by its name alone."""
        if not isinstance(raw, dict) or not raw.get("studies"):
            return raw
        if raw.get("study_size", "demo") not in STUDY_SIZES:
            raise ValueError(f"study_size: {raw['study_size']!r} is not one of {', '.join(STUDY_SIZES)}")
        variants = raw.get("variants") or {}
        for vname in variants:
            if vname in METHODS:
                raise ValueError(f"variants.{vname}: a variant may not take a method's name")
        for sname, study in raw["studies"].items():
            if not isinstance(study, dict):
                continue  # the field validation names it
            fractions, methods, seeds = study_axes(study, raw.get("study_size", "demo"))
            for i, m in enumerate(methods):
                if m not in METHODS and m not in variants:
                    raise ValueError(f"studies.{sname}.methods[{i}]: {m!r} is neither a method "
                                     f"({', '.join(METHODS)}) nor a name under variants:")
            if study.get("headline") is not None and study["headline"] not in methods:
                raise ValueError(f"studies.{sname}.headline: {study.get('headline')!r} is not in its methods")
            for key in ("baseline", "ssl_baselines"):
                for m in [study.get(key, "supervised")] if key == "baseline" else study.get(key, []):
                    if m not in METHODS and m not in variants:
                        raise ValueError(f"studies.{sname}.{key}: {m!r} is neither a method nor a variant")
            if len(set(seeds)) != len(seeds) or len(set(fractions)) != len(fractions):
                raise ValueError(f"studies.{sname}: fractions and seeds must not repeat")
        regimes = dict(raw.get("regimes") or {})
        try:
            grid = expand_grid(raw)
        except ParamsError as e:
            raise ValueError(str(e)) from e
        for name, spec in grid.items():
            if name in regimes and regimes[name] != spec:
                raise ValueError(f"regimes.{name}: the name of a run of studies.{spec['study']}; rename it")
            regimes[name] = spec
        return {**raw, "regimes": regimes}

    @cached_property
    def splits(self) -> dict[str, tuple[str, float]]:
        """{split name: (dataset, fraction)}: one labelled set per (dataset, fraction), shared by its runs."""
        return {r.split: (r.dataset, r.fraction) for r in self.regimes.values()}

    def split_of(self, name: str) -> tuple[str, float]:
        if name not in self.splits:
            raise ParamsError(f"unknown split {name!r}; the runs in {self._source} use: {', '.join(self.splits)}")
        return self.splits[name]

    def study(self, name: str) -> StudyParams:
        if name not in self.studies:
            raise ParamsError(f"unknown study {name!r}; {self._source} studies: {', '.join(self.studies) or 'none'}")
        return self.studies[name]

    def study_runs(self, name: str) -> dict[str, RegimeParams]:
        self.study(name)
        return {k: r for k, r in self.regimes.items() if r.study == name}

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; {self._source} datasets: {', '.join(self.datasets)}")
        return self.datasets[name]

    def regime(self, name: str) -> RegimeParams:
        if name not in self.regimes:
            raise ParamsError(f"unknown run {name!r}; the runs of {self._source}: {', '.join(self.regimes)} "
                              "(run names: <dataset>_<pct>pct[-<method or variant>][-s<seed>])")
        return self.regimes[name]

    def run_key(self, name: str, dotted: str) -> str:
        """The params key a user edits to change ``dotted`` (``method``, ``fraction`` or ``train.<key>``) of a run:
        the variant or study that sets it, the run's own ``regimes:`` entry, or the ``train`` section."""
        r = self.regime(name)
        sub = dotted.removeprefix("train.") if dotted.startswith("train.") else None
        if r.study is None:
            return dotted if sub is not None and not _has(r.train, sub) else f"regimes.{name}.{dotted}"
        if sub is None:
            axis = {"method": f"methods ({r.variant!r})", "fraction": f"fractions ({r.fraction})"}.get(dotted, dotted)
            return f"studies.{r.study}.{axis}, run {name}"
        v = self.variants.get(r.variant or "")
        if v is not None and _has(v.train, sub):
            return f"variants.{r.variant}.{dotted}"
        return f"studies.{r.study}.{dotted}" if _has(self.studies[r.study].train, sub) else dotted

    def train_for(self, regime: str) -> TrainParams:
        """The ``train`` section with the regime's overrides merged in (validated)."""
        r = self.regime(regime)
        merged = deep_merge(self.train.model_dump(), r.train)
        try:
            return TrainParams.model_validate(merged)
        except ValidationError as e:
            where = (f"studies.{r.study}.train + variants.{r.variant}.train (run {regime})" if r.study
                     else f"regimes.{regime}.train")
            raise ParamsError(f"{where}: {validation_message(e)}") from e  # load() names the file


def _has(tree: dict, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def deep_merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``, recursing into dicts both have; neither input is modified or shared."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out




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
        raise ParamsError(f"{path}: {validation_message(e)}") from e
    params._source = str(path)
    for name, st in params.studies.items():
        if st.dataset not in params.datasets:
            raise ParamsError(f"{path}: studies.{name}.dataset: unknown dataset {st.dataset!r}")
    # every override on its own, so a typo in a variant no study of this size lists is found now too
    overrides = [(f"studies.{n}.train", st.train) for n, st in params.studies.items()]
    overrides += [(f"variants.{n}.train", v.train) for n, v in params.variants.items()]
    for key, over in overrides:
        try:
            TrainParams.model_validate(deep_merge(params.train.model_dump(), over))
        except ValidationError as e:
            raise ParamsError(f"{path}: {key}: {validation_message(e)}") from e
    for name, r in params.regimes.items():
        if r.dataset not in params.datasets:
            raise ParamsError(f"{path}: regimes.{name}.dataset: unknown dataset {r.dataset!r}")
        try:
            params.train_for(name)  # validates overrides early
        except ParamsError as e:
            raise ParamsError(f"{path}: {e}") from e
    return params

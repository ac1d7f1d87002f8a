"""study@<study>: aggregate one study's runs into tables, paired comparisons and falsification verdicts.

    medref study qata        # -> studies/qata.json (DVC metric) + studies/qata/{study.md, table.csv, ...}

Reads only what the eval stages wrote (``metrics/<run>.json`` and ``eval/<run>/per_sample.csv``) for the runs
the grid gives the study (params.yaml ``studies.<study>``; run names in workflow/grid.yaml). No torch.

- **Main table**: method (or variant) x labelled fraction, mean +- std over the training seeds (sample std,
  n-1), for Dice and IoU in both conventions (per-image mean, and global = pooled pixel counts), HD95, NSD,
  image->text top-1 retrieval and region agreement, and the pooled-feature dispersion.
- **Text reliance** (text-guided runs): per-image Dice with each test image's text replaced by another's, and
  with left/right swapped, beside the true-text Dice, mean +- std over seeds (eval's ``text_reliance``).
- **Paired deltas**: every method minus the study's ``baseline`` and minus the best of its ``ssl_baselines``
  at that fraction (the highest mean per-image Dice), seed by seed (runs at one fraction share the labelled
  set; seed s is paired with seed s). With each: the mean delta, the per-seed win count, and a bootstrap 95 %
  CI over test images (the same resampled images for both methods and every seed; per-image Dice averaged,
  global Dice recomputed from the resampled pixel counts; ``studies.<study>.bootstrap`` replicates seeded
  with base.seed).
- **Ablation table**: each variant minus its own method (``semi_medref-no_posaug`` - ``semi_medref``).
- **Verdicts** of the two seed papers' falsification tests (``HYPOTHESES``, one table), from these numbers, with the
  numbers.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_src.errors import MedrefError
from pipeline_src.evaluate.metric_specs import METRICS, lookup, specs
from pipeline_src.utils.io import atomic_dir, write_json

# The metrics of each table, in column order; labels, digits and directions are pipeline_src/evaluate/metric_specs.py's.
# dispersion is Med-DisSeg's probe
MAIN = ("dice", "dice_global", "iou", "iou_global", "hd95", "nsd", "alignment.top1", "alignment.region_agreement",
        "dispersion.mean_pairwise_dist")
# eval's text-reliance probe (text-guided runs only; null for image-only ones): Dice with deranged texts and with
# left/right swapped, and the drops from the true-text Dice
RELIANCE = ("text_reliance.true_dice", "text_reliance.shuffled_dice", "text_reliance.drop_shuffled",
            "text_reliance.swapped_dice", "text_reliance.drop_swapped")
DELTA_COLUMNS = ("dice", "dice_global", "hd95", "nsd", "alignment.top1")  # of the paired deltas (all of MAIN in json)
ABLATION_COLUMNS = (*DELTA_COLUMNS, "dispersion.mean_pairwise_dist")
SEMI_MEDREF, MEDDISSEG = "semi_medref", "meddisseg"
FALSIFICATION_FRACTION = 0.10


# ---- reading the runs ------------------------------------------------------------------------------------------
def _get(m: dict, dotted: str) -> float | None:
    node = lookup(m, dotted)
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _read_run(name: str, metrics_dir: Path, eval_root: Path) -> tuple[dict, dict[str, np.ndarray] | None]:
    mfile = metrics_dir / f"{name}.json"
    if not mfile.is_file():
        raise MedrefError(f"{mfile}: missing; the study needs eval@{name} first (`dvc repro eval@{name}`)")
    try:
        m = json.loads(mfile.read_text())
    except ValueError as e:
        raise MedrefError(f"{mfile}: not valid JSON ({e}); re-run `dvc repro -f eval@{name}`") from e
    per = eval_root / name / "per_sample.csv"
    return m, (_read_per_sample(per) if per.is_file() else None)


def _read_per_sample(per: Path) -> dict[str, np.ndarray] | None:
    """id, dice, tp, fp, fn of eval's per_sample.csv; an empty cell (eval's NaN) is NaN; None for a table without
    a ``tp`` column (multi-class runs have per-case rows: no per-image bootstrap for them). The csv module, not
    pandas (0.4 s of import for one small table); eval writes ``%.6g``, which float() reads to the same double."""
    with per.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise MedrefError(f"{per}: empty, not eval's per-sample table; re-run its eval stage")
        if "tp" not in reader.fieldnames:
            return None
        rows = list(reader)
    try:
        cols = {k: np.array([math.nan if r[k] == "" else float(r[k]) for r in rows], dtype=np.float64)
                for k in ("dice", "tp", "fp", "fn")}
    except (KeyError, TypeError, ValueError) as e:
        raise MedrefError(f"{per}: not eval's per-sample table ({type(e).__name__}: {e}); re-run its eval stage") from e
    return {"id": np.array([r["id"] for r in rows], dtype=object), **cols}


def _mean_std(values: list[float]) -> dict:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v)}


def _global_dice(tp, fp, fn) -> np.ndarray:
    """Pooled Dice per bootstrap replicate (rows); 1.0 where nothing is predicted and nothing is there."""
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 1.0)


# ---- paired comparisons ----------------------------------------------------------------------------------------
def paired(a: dict[int, dict], b: dict[int, dict], key: str, boot_idx: np.ndarray | None) -> dict | None:
    """``a`` minus ``b``: runs by seed, each {"metrics", "per"}; only seeds both have. Returns the per-seed
    deltas, their mean, the win count (a better than b: higher, or lower for HD95) and, for per-image and global
    Dice, the bootstrap CI of the seed-averaged delta over resampled test images."""
    seeds = sorted(s for s in a if s in b)
    deltas = {}
    for s in seeds:
        x, y = _get(a[s]["metrics"], key), _get(b[s]["metrics"], key)
        if x is not None and y is not None:
            deltas[s] = x - y
    if not deltas:
        return None
    sign = -1.0 if METRICS[key].lower_is_better else 1.0
    out = {"seeds": sorted(deltas), "deltas": [deltas[s] for s in sorted(deltas)],
           "mean": float(np.mean(list(deltas.values()))),
           "wins": int(sum(sign * d > 0 for d in deltas.values())), "n": len(deltas), "ci95": None}
    if key in ("dice", "dice_global") and boot_idx is not None:
        reps = []
        for s in sorted(deltas):
            pa, pb = a[s]["per"], b[s]["per"]
            if pa is None or pb is None or not np.array_equal(pa["id"], pb["id"]) or len(pa["id"]) != boot_idx.shape[1]:
                return out  # not on the same test images: no paired bootstrap
            if key == "dice":
                reps.append(pa["dice"][boot_idx].mean(1) - pb["dice"][boot_idx].mean(1))
            else:
                ga = _global_dice(*(pa[k][boot_idx].sum(1) for k in ("tp", "fp", "fn")))
                gb = _global_dice(*(pb[k][boot_idx].sum(1) for k in ("tp", "fp", "fn")))
                reps.append(ga - gb)
        mean_rep = np.mean(reps, axis=0)
        out["ci95"] = [float(np.percentile(mean_rep, 2.5)), float(np.percentile(mean_rep, 97.5))]
    return out


# ---- the study -------------------------------------------------------------------------------------------------
def collect(params, study: str, metrics_dir: Path, eval_root: Path) -> dict[str, dict[float, dict[int, dict]]]:
    """{variant: {fraction: {seed: {"run", "metrics", "per"}}}} for every run the grid gives the study."""
    runs = params.study_runs(study)
    if not runs:
        raise MedrefError(f"{params._source}: studies.{study} has no runs")
    cells: dict[str, dict[float, dict[int, dict]]] = {}
    for name, r in runs.items():
        m, per = _read_run(name, Path(metrics_dir), Path(eval_root))
        cells.setdefault(r.variant, {}).setdefault(r.fraction, {})[r.seed] = {"run": name, "metrics": m, "per": per}
    return cells


def _bootstrap_index(cells: dict, n_boot: int, seed: int) -> dict[float, np.ndarray | None]:
    """One [n_boot, n_images] index matrix per fraction, shared by every comparison at that fraction (None when
    the runs there do not all have per-image rows for the same number of test images)."""
    out: dict[float, np.ndarray | None] = {}
    for f in sorted({f for v in cells.values() for f in v}):
        ns = {len(c["per"]["id"]) if c["per"] is not None else None
              for v in cells.values() for c in v.get(f, {}).values()}
        if n_boot <= 0 or len(ns) != 1 or None in ns:
            out[f] = None
            continue
        n = ns.pop()
        out[f] = np.random.default_rng([seed, round(f * 1_000_000)]).integers(0, n, size=(n_boot, n))
    return out


def aggregate(params, study: str, cells: dict) -> dict:
    st = params.study(study)
    variants = list(cells)
    fractions = sorted({f for v in cells.values() for f in v})
    boot = _bootstrap_index(cells, st.bootstrap, params.base.seed)
    table = {v: {f"{f:g}": {k: _mean_std([_get(c["metrics"], k) for c in cells[v].get(f, {}).values()])
                            for k in MAIN + RELIANCE} for f in fractions if f in cells[v]} for v in variants}
    best_ssl = {}
    for f in fractions:
        present = [b for b in st.ssl_baselines if f in cells.get(b, {})]
        if present:
            best_ssl[f] = max(present, key=lambda b: table[b][f"{f:g}"]["dice"]["mean"] or -1.0)

    def compare(v: str, ref: str, f: float) -> dict:
        return {k: paired(cells[v][f], cells[ref][f], k, boot[f]) for k in MAIN}

    deltas = []
    for f in fractions:
        for ref_kind, ref in (("baseline", st.baseline), ("best_ssl", best_ssl.get(f))):
            if ref is None or f not in cells.get(ref, {}):
                continue
            for v in variants:
                if v != ref and f in cells[v] and not (ref_kind == "best_ssl" and v in st.ssl_baselines):
                    deltas.append({"fraction": f, "method": v, "against": ref, "kind": ref_kind, **compare(v, ref, f)})
    ablations = []
    for v in variants:
        parent = (params.variants.get(v).method if v in params.variants else None)
        for f in fractions:
            if parent and parent in cells and f in cells[v] and f in cells[parent]:
                ablations.append({"fraction": f, "variant": v, "against": parent, **compare(v, parent, f)})
    result = {
        "study": study, "dataset": st.dataset, "study_size": params.study_size, "headline": st.headline,
        "fractions": fractions, "methods": variants,
        "seeds": sorted({s for v in cells.values() for fc in v.values() for s in fc}),
        "runs": {v: {f"{f:g}": {str(s): c["run"] for s, c in sorted(fc.items())} for f, fc in cells[v].items()}
                 for v in variants},
        "table": table, "best_ssl": {f"{f:g}": b for f, b in best_ssl.items()},
        "deltas": deltas, "ablations": ablations,
        "bootstrap": {"replicates": st.bootstrap, "seed": params.base.seed},
    }
    result["verdicts"] = verdicts(params, study, cells, result)
    return result


def _fmt_delta(d: dict | None, digits: int = 3) -> str:
    if d is None:
        return "n/a"
    ci = f", 95 % CI [{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]" if d.get("ci95") else ""
    return f"{d['mean']:+.{digits}f} (wins {d['wins']}/{d['n']}{ci})"


# ---- the falsification tests -----------------------------------------------------------------------------------
BEST_SSL = "best_ssl"  # Hypothesis.against: the best of the study's ssl_baselines at the fraction (as in the deltas)


@dataclass(frozen=True)
class Hypothesis:
    """One falsification test of a seed paper, read off the paired deltas the study already holds (the same
    bootstrap index; no second computation).

    Its rows are the comparisons ``compare`` minus ``against``, one per labelled fraction (or only ``fraction``),
    each the deltas of ``metrics``; a row without one of them decides nothing. ``test`` gives the verdict:

    - "ci": the bootstrap 95 % CI of the first metric's delta lies on the ``sign`` side of 0 at every fraction
      (``yes``), on the other side at every fraction (``no``), or neither (``undecided``);
    - "seeds": every seed's delta of the first metric, at every fraction, has the ``sign`` (``yes``), or every one the
      other sign (``no``), or the signs differ (``undecided``);
    - "means": the first metric's mean delta rises at every fraction (else ``premise``: the change does not do what
      it is for), and the other metrics' are nowhere better (``yes``, else ``no``; better: metric_specs' direction).
    """

    key: str  # its name under "verdicts" in studies/<study>.json
    method: str  # the paper's method: a study that does not run it has nothing to test (and no entry)
    compare: str  # the variant tested, ...
    against: str  # ... minus this one (an ablation), or minus BEST_SSL
    metrics: tuple[str, ...]  # metric_specs keys
    test: str  # "ci", "seeds" or "means"
    yes: str
    no: str
    no_data: str  # the verdict when no row has every metric
    evidence: str  # one row, str.format'ed: {fraction}, {compare}, {against} and the metrics' deltas {0}, {1}, ...
    undecided: str = ""  # "ci", "seeds"
    premise: str = ""  # "means"
    sign: int = 0  # "ci", "seeds": the sign of the delta that the claim predicts
    fraction: float | None = None  # only at this labelled fraction; None: at each one the study has
    flip: bool = False  # ``compare`` turns the change off: the claim is about on - off = -(compare - against)
    record: str = ""  # a json field keeping the first metric's deltas, by fraction (the delta at ``fraction``)
    list_missing: bool = False  # the evidence lists fractions without the metric too (as n/a)


HYPOTHESES = (
    # Semi-MedRef 1: at 10 % labels, does semi_medref fall below the SSL baselines?
    Hypothesis(
        "semi_medref_below_ssl_at_10pct", SEMI_MEDREF, compare=SEMI_MEDREF, against=BEST_SSL,
        fraction=FALSIFICATION_FRACTION, metrics=("dice",), test="ci", sign=-1, record="dice_delta",
        yes="yes: the claim is falsified here (Semi-MedRef is below the best SSL baseline)",
        no="no: Semi-MedRef is above the best SSL baseline",
        undecided="inconclusive: the CI of the difference includes 0",
        no_data="not tested: the runs have no Dice to compare",
        evidence="Dice {compare} - {against} at {fraction:.0%}: {0}",
    ),
    # Semi-MedRef 2: does image->text alignment drop when T-PatchMix is on?
    Hypothesis(
        "alignment_drops_with_tpatchmix", SEMI_MEDREF, compare=f"{SEMI_MEDREF}-no_tpatchmix", against=SEMI_MEDREF,
        flip=True, metrics=("alignment.top1",), test="seeds", sign=-1, record="top1_on_minus_off",
        list_missing=True,
        yes="yes: top-1 is lower with T-PatchMix on, in every seed and fraction",
        no="no: top-1 is higher with T-PatchMix on, in every seed and fraction",
        undecided="inconclusive: the sign changes across seeds or fractions",
        no_data="not tested: no alignment scores (eval.alignment is off?)",
        evidence="{fraction:g}: {0}",
    ),
    # Med-DisSeg: does the dispersive loss raise dispersion while HD95 / NSD are no better?
    Hypothesis(
        "dispersion_up_boundaries_not_better", MEDDISSEG, compare=f"{MEDDISSEG}-disp", against=MEDDISSEG,
        metrics=("dispersion.mean_pairwise_dist", "hd95", "nsd"), test="means",
        yes="yes: dispersion rises, HD95 and NSD are no better (the boundary claim is falsified here)",
        no="no: dispersion rises and HD95 or NSD improve",
        premise="no: the loss does not raise the measured dispersion",
        no_data="not tested: the runs have no dispersion (eval.dispersion_stage is null?)",
        evidence="{fraction:.0%}: dispersion {0}, HD95 {1}, NSD {2}",
    ),
)  # fmt: skip


def verdicts(params, study: str, cells: dict, res: dict) -> dict:
    """The falsification tests of the two seed papers (HYPOTHESES), as {test: {verdict, evidence, ...}}. Each
    paper's tests are reported for a study that runs its method (the mosmed study has nothing to test)."""
    methods = {(params.variants[v].method if v in params.variants else v) for v in cells}
    return {h.key: _verdict(h, params.study(study).ssl_baselines, study, res) for h in HYPOTHESES
            if h.method in methods}


def _verdict(h: Hypothesis, ssl_baselines: list[str], study: str, res: dict) -> dict:
    """One verdict: {verdict, evidence} and, as the table says, the recorded deltas and the best SSL baseline."""
    if h.against == BEST_SSL:
        rows = [d for d in res["deltas"] if d["kind"] == BEST_SSL and d["method"] == h.compare]
        needs = f"needs {h.compare} and one of {ssl_baselines}"
    else:
        rows = [d for d in res["ablations"] if d["variant"] == h.compare and d["against"] == h.against]
        needs = f"needs {h.compare} beside {h.against}"
    if h.fraction is not None:
        rows = [r for r in rows if r["fraction"] == h.fraction]
        needs += f" at {h.fraction:.0%}"
    if not rows:
        hint = f"add it to studies.{study}.methods (or set study_size: full and run `medref grid`)"
        return {"verdict": "not tested", "evidence": f"{needs}; {hint}"}
    deltas = [[_flipped(r[k]) if h.flip else r[k] for k in h.metrics] for r in rows]
    complete = [ds for ds in deltas if None not in ds]
    shown = [(r, ds) for r, ds in zip(rows, deltas, strict=True) if h.list_missing or None not in ds]
    out = {"verdict": _decide(h, complete) if complete else h.no_data,
           "evidence": "; ".join(_evidence(h, r, ds) for r, ds in shown)}
    if h.record:
        kept = {f"{r['fraction']:g}": ds[0] for r, ds in zip(rows, deltas, strict=True)}
        out[h.record] = next(iter(kept.values())) if h.fraction is not None else kept
    if h.against == BEST_SSL:
        out[BEST_SSL] = rows[0]["against"]
    return out


def _evidence(h: Hypothesis, row: dict, deltas: list[dict | None]) -> str:
    texts = [_fmt_delta(d, s.digits) for d, s in zip(deltas, specs(h.metrics), strict=True)]
    return h.evidence.format(*texts, fraction=row["fraction"], compare=h.compare, against=row["against"])


def _flipped(d: dict | None) -> dict | None:
    """A paired delta turned round (b - a from a - b)."""
    if d is None:
        return None
    ci = d["ci95"]
    return {**d, "mean": -d["mean"], "deltas": [-x for x in d["deltas"]], "wins": d["n"] - d["wins"],
            "ci95": None if ci is None else [-ci[1], -ci[0]]}


def _decide(h: Hypothesis, rows: list[list[dict]]) -> str:
    """h's verdict from the complete rows (each the deltas of h.metrics at one fraction)."""
    if h.test == "means":
        if not all(ds[0]["mean"] > 0 for ds in rows):
            return h.premise
        better = any(_improves(k, d["mean"]) for ds in rows for k, d in zip(h.metrics[1:], ds[1:], strict=True))
        return h.no if better else h.yes
    if h.test == "ci":  # the CI is on one side of 0 where both its ends are
        cis = [ds[0]["ci95"] for ds in rows]
        if None in cis:
            return h.undecided
        values = [x for ci in cis for x in ci]
    else:  # "seeds"
        values = [x for ds in rows for x in ds[0]["deltas"]]
    if all(h.sign * x > 0 for x in values):
        return h.yes
    if all(h.sign * x < 0 for x in values):
        return h.no
    return h.undecided


def _improves(key: str, delta: float) -> bool:
    return delta < 0 if METRICS[key].lower_is_better else delta > 0


# ---- writing ---------------------------------------------------------------------------------------------------
def _cell(t: dict, digits: int) -> str:
    if t["mean"] is None:
        return "-"
    return f"{t['mean']:.{digits}f}" + (f" ± {t['std']:.{digits}f}" if t["std"] is not None else "")


def _delta_table(head: list[str], keys: tuple[str, ...], rows: list[tuple[list[str], dict]]) -> list[str]:
    """A markdown table of paired deltas: the ``head`` columns, then one Δ column per metric of ``keys``."""
    cols = specs(keys)
    lines = ["| " + " | ".join(head + [f"Δ {s.label}" for s in cols]) + " |", "|" + "---|" * (len(head) + len(cols))]
    for first, d in rows:
        lines.append("| " + " | ".join(first + [_fmt_delta(d[s.key], s.digits) for s in cols]) + " |")
    return lines


def markdown(res: dict) -> str:
    lines = [f"# Study `{res['study']}` ({res['dataset']}, study_size {res['study_size']})", "",
             f"Seeds {res['seeds']}; mean ± std over seeds (sample std; none shown for one seed). Dice/IoU: "
             "per-image mean, and global (pixel counts pooled over the test images). HD95 in pixels.", ""]
    head = ["method", "labelled"] + [s.header for s in specs(MAIN)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, by_f in res["table"].items():
        for f, t in by_f.items():
            lines.append("| " + " | ".join([v + (" (headline)" if v == res["headline"] else ""), f"{float(f):.0%}"]
                                           + [_cell(t[s.key], s.digits) for s in specs(MAIN)]) + " |")
    reliance = [(v, f, t) for v, by_f in res["table"].items() for f, t in by_f.items()
                if t.get(RELIANCE[0], {}).get("mean") is not None]
    if reliance:
        lines += ["", "## Text reliance (does the model read the report?)", "",
                  "Per-image Dice with each test image's text replaced by another test image's (a fixed seeded "
                  "derangement), and with left/right swapped in every text, beside the true-text Dice; drop = true "
                  "minus perturbed. Image-only runs read no text and are left out.", "",
                  "| method | labelled | " + " | ".join(s.label for s in specs(RELIANCE)) + " |",
                  "|" + "---|" * (len(RELIANCE) + 2)]
        for v, f, t in reliance:
            lines.append(f"| {v} | {float(f):.0%} | " + " | ".join(_cell(t[s.key], s.digits) for s in specs(RELIANCE))
                         + " |")
    lines += ["", "## Paired deltas (method − reference, same labelled set, seed by seed)", "",
              "Wins: seeds where the method is better. CI: bootstrap 95 % over test images "
              f"({res['bootstrap']['replicates']} replicates, seed {res['bootstrap']['seed']}).", ""]
    lines += _delta_table(["labelled", "method", "against"], DELTA_COLUMNS,
                          [([f"{d['fraction']:.0%}", d["method"], f"{d['against']} ({d['kind']})"], d)
                           for d in res["deltas"]])
    if res["ablations"]:
        lines += ["", "## Ablations (variant − its method)", ""]
        lines += _delta_table(["labelled", "variant", "against"], ABLATION_COLUMNS,
                              [([f"{d['fraction']:.0%}", d["variant"], d["against"]], d) for d in res["ablations"]])
    if res["verdicts"]:
        lines += ["", "## Falsification tests", ""]
    for k, v in res["verdicts"].items():
        lines.append(f"- **{k}**: {v['verdict']}. {v['evidence']}")
    lines += ["", "![Dice vs labelled fraction](dice_vs_fraction.png)", ""]
    return "\n".join(lines)


def _plot(res: dict, out: Path) -> None:
    """Dice vs labelled fraction, one line per method: 20 colours and 4 line styles so that no two of up to 80
    methods look alike, each method's points dodged a little sideways, ticks at the study's own fractions, and the
    legend beside the panels, not over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(res["table"])
    fracs = [f * 100 for f in res["fractions"]]
    colours, styles = plt.get_cmap("tab20").colors, ["-", "--", ":", "-."]
    width = 11 + (3 if len(methods) > 10 else 0)
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.5), sharey=True)
    for ax, key, title in ((axes[0], "dice", "per-image Dice"), (axes[1], "dice_global", "global Dice")):
        for i, v in enumerate(methods):
            by_f = res["table"][v]
            fs = sorted(by_f, key=float)
            ys = [by_f[f][key]["mean"] for f in fs]
            es = [by_f[f][key]["std"] or 0.0 for f in fs]
            head = v == res["headline"]
            dodge = math.exp(0.012 * (i - (len(methods) - 1) / 2))  # side by side, so error bars do not overlap
            ax.errorbar([float(f) * 100 * dodge for f in fs], ys, yerr=es, marker="o", ms=4 if not head else 7, capsize=3,
                        color=colours[i % 20], ls=styles[(i // 20) % 4], lw=2.5 if head else 1.2,
                        label=v + (" (headline)" if head else ""))
        if len(fracs) > 1 and max(fracs) / min(fracs) >= 4:
            ax.set_xscale("log")
        ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
        ax.minorticks_off()
        ax.set_xlabel("labelled fraction (%)")
        ax.set_title(f"{res['study']}: {title}\n(mean ± std over {len(res['seeds'])} seed(s))", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=7,
               ncol=1 if len(methods) <= 24 else 2, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.80, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _csv(res: dict, out: Path) -> None:
    """Long table, one row per (method, fraction): the `dvc plots` source and a spreadsheet's."""
    cols = ["method", "fraction_pct"] + [f"{k}_{s}" for k in MAIN + RELIANCE for s in ("mean", "std")]
    rows = [",".join(cols)]
    for v, by_f in res["table"].items():
        for f, t in sorted(by_f.items(), key=lambda x: float(x[0])):
            vals = [v, f"{float(f) * 100:g}"] + ["" if t[k][s] is None else f"{t[k][s]:.6g}"
                                                  for k in MAIN + RELIANCE for s in ("mean", "std")]
            rows.append(",".join(vals))
    out.write_text("\n".join(rows) + "\n")


def _wide_csv(res: dict, out: Path) -> None:
    """One row per fraction, a column per method (mean per-image Dice) and ``<method>_global``: `dvc plots`."""
    methods = list(res["table"])
    rows = [",".join(["fraction_pct"] + [c for m in methods for c in (m, f"{m}_global")])]
    for f in res["fractions"]:
        cells = []
        for m in methods:
            t = res["table"][m].get(f"{f:g}")
            cells += ["" if t is None or t[k]["mean"] is None else f"{t[k]['mean']:.6g}" for k in ("dice", "dice_global")]
        rows.append(",".join([f"{f * 100:g}"] + cells))
    out.write_text("\n".join(rows) + "\n")


def run(params, study: str, metrics_dir: Path, eval_root: Path, out_dir: Path, summary_file: Path) -> dict:
    cells = collect(params, study, metrics_dir, eval_root)
    res = aggregate(params, study, cells)
    with atomic_dir(out_dir) as tmp:
        (tmp / "study.md").write_text(markdown(res))
        _csv(res, tmp / "table.csv")
        _wide_csv(res, tmp / "dice_vs_fraction.csv")
        _plot(res, tmp / "dice_vs_fraction.png")
    write_json(summary_file, res)
    n = sum(len(fc) for v in cells.values() for fc in v.values())
    print(f"[study] {study}: {n} runs, {len(res['methods'])} methods x {len(res['fractions'])} fractions -> "
          f"{summary_file}, {out_dir}/study.md", flush=True)
    for k, v in res["verdicts"].items():
        print(f"[study] {k}: {v['verdict']}", flush=True)
    return res

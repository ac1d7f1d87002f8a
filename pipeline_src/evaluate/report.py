"""report: one table of every regime × method, both Dice conventions, and where each number came from.

    medref report        # metrics/*.json + eval/<regime>/ -> reports/

reports/ holds
  report.md, report.csv        every evaluated regime, plus published reference rows marked "published, not ours"
  dice_vs_fraction.png         Dice vs labelled fraction per method (per-image solid, global dashed)
  dice_vs_fraction.csv         the same points, long form (dataset, method, fraction_pct, dice, ...)
  plots/dice_vs_fraction/<dataset>.csv   wide form (fraction_pct, <method>, <method>_global) for `dvc plots`
  overlays/<regime>/*.png, hist/<regime>.png   copied from eval/<regime>/ (the report never loads a model)
  index.html                   all of the above on one page

Numbers are shown in percent (Dice, IoU, NSD, sensitivity, specificity) and pixels (HD95, ASSD).
Published numbers are on the *real* datasets at 224×224; when our dataset source is synthetic the
report says so, because then the two are not comparable.
"""

from __future__ import annotations

import csv
import html
import io
import json
import shutil
from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.evaluate import plots
from pipeline_src.evaluate.metrics import REGIONS
from pipeline_src.utils.io import atomic_dir

# Published reference numbers (percent), NOT produced by this pipeline. "convention" says how the
# paper averaged: per_image = mean over images (LViT), global = pooled over all pixels (GuideDecoder).
PUBLISHED = (
    {
        "kind": "qata",
        "fraction": 1.0,
        "method": "LViT-T",
        "convention": "per_image",
        "dice": 83.66,
        "iou": 75.11,
        "ref": "Li et al., LViT, IEEE TMI 2023, Table (QaTa-COV19, 100% labels)",
    },
    {
        "kind": "qata",
        "fraction": 1.0,
        "method": "GuideDecoder",
        "convention": "global",
        "dice": 89.78,
        "iou": 81.45,
        "ref": "Zhong et al., Ariadne's Thread (GuideDecoder), MICCAI 2023",
    },
    {
        "kind": "qata",
        "fraction": 1.0,
        "method": "U-Net",
        "convention": "per_image",
        "dice": 79.02,
        "iou": 69.46,
        "ref": "as reported by LViT, IEEE TMI 2023",
    },
    {
        "kind": "mosmed",
        "fraction": 1.0,
        "method": "LViT-T",
        "convention": "per_image",
        "dice": 74.57,
        "iou": 61.33,
        "ref": "Li et al., LViT, IEEE TMI 2023 (MosMedData+, 100% labels)",
    },
    {
        "kind": "mosmed",
        "fraction": 1.0,
        "method": "U-Net",
        "convention": "per_image",
        "dice": 64.60,
        "iou": 50.73,
        "ref": "as reported by LViT, IEEE TMI 2023",
    },
)
PUBLISHED_LABEL = "published, not ours"

# report.csv columns; percentages are 0-100, distances pixels.
CSV_COLUMNS = (
    "source", "dataset", "data_source", "method", "fraction_pct", "regime", "eval_split", "n",
    "dice", "dice_std", "iou", "iou_std", "dice_global", "iou_global",
    "hd95", "assd", "nsd", "sensitivity", "specificity", "align_top1", "drop_shuffled", "drop_swapped",
    "reference", "commit", "dirty", "params_digest", "shards_digest", "labels_digest", "model_digest",
    "train_commit", "train_params_digest", "split_digest",
)  # fmt: skip
PCT = ("dice", "dice_std", "iou", "iou_std", "dice_global", "iou_global", "nsd", "sensitivity", "specificity")
REGIME_KEYS = ("regime", "dataset", "method", "fraction", "dice", "dice_global")


def load_metrics(metrics_dir: Path) -> list[dict]:
    """Every regime metrics file in ``metrics_dir`` (not recursive: metrics/labels/*.json are label
    agreement, not regimes); files without the regime keys are skipped for the same reason."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        raise MedrefError(f"{metrics_dir}: metrics folder not found (run `medref eval <regime>` first)")
    out = []
    for f in sorted(metrics_dir.glob("*.json")):
        try:
            m = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise MedrefError(f"{f}: not valid JSON: {e}") from e
        if isinstance(m, dict) and all(k in m for k in REGIME_KEYS):
            m["_file"] = f.name
            out.append(m)
    return out


def _short(d: str | None, n: int = 12) -> str:
    return d[:n] if isinstance(d, str) else ""


def _pct(v) -> float | None:
    return None if v is None else 100.0 * float(v)


def row_for(m: dict, data_source: str) -> dict:
    """One report row (percent units) from one metrics file, with its provenance flattened."""
    prov = m.get("provenance") or {}
    git = prov.get("git") or {}
    inputs = prov.get("inputs") or {}
    train = prov.get("train") or {}
    tinputs = train.get("inputs") or {}
    row = {
        "source": "ours",
        "dataset": m["dataset"],
        "data_source": data_source,
        "method": m["method"],
        "fraction_pct": 100.0 * float(m["fraction"]),
        "regime": m["regime"],
        "eval_split": m.get("eval_split"),
        "n": m.get("n"),
        "hd95": m.get("hd95"),
        "assd": m.get("assd"),
        "align_top1": _pct((m.get("alignment") or {}).get("top1")),
        # text reliance: Dice points lost with another image's text / with left and right swapped
        "drop_shuffled": _pct((m.get("text_reliance") or {}).get("drop_shuffled")),
        "drop_swapped": _pct((m.get("text_reliance") or {}).get("drop_swapped")),
        "reference": f"metrics/{m['_file']}",
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "params_digest": prov.get("params_digest"),
        "shards_digest": inputs.get("shards"),
        "labels_digest": inputs.get("labels"),
        "model_digest": inputs.get("model"),
        "train_commit": (train.get("git") or {}).get("commit"),
        "train_params_digest": train.get("params_digest"),
        "split_digest": tinputs.get("split"),
    }
    row.update({k: _pct(m.get(k)) for k in PCT})
    return row


def published_rows(datasets: dict[str, tuple[str, str]]) -> list[dict]:
    """Published rows for each of our datasets whose kind the papers evaluated (qata, mosmed)."""
    rows = []
    for name, (kind, _source) in sorted(datasets.items()):
        for p in PUBLISHED:
            if p["kind"] != kind:
                continue
            key = "" if p["convention"] == "per_image" else "_global"
            rows.append({
                "source": PUBLISHED_LABEL, "dataset": name, "data_source": f"real {kind} (paper)",
                "method": p["method"], "fraction_pct": 100.0 * p["fraction"],
                f"dice{key}": p["dice"], f"iou{key}": p["iou"], "reference": p["ref"],
            })  # fmt: skip
    return rows


def _fmt(v, digits: int = 2) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pm(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


TABLE_HEAD = (
    "source", "method", "labels %", "split", "n", "Dice per-image", "IoU per-image", "Dice global", "IoU global",
    "HD95 px", "ASSD px", "NSD", "Sens", "Spec", "img→txt top1", "Dice drop, shuffled text", "Dice drop, sides swapped",
)  # fmt: skip


def _table_cells(r: dict) -> list[str]:
    src = "ours" if r["source"] == "ours" else f"**{PUBLISHED_LABEL}**"
    method = r["method"] if r["source"] == "ours" else f"*{r['method']}* †"
    return [
        src, method, _fmt(r["fraction_pct"], 0), _fmt(r.get("eval_split")), _fmt(r.get("n")),
        _pm(r.get("dice"), r.get("dice_std")), _pm(r.get("iou"), r.get("iou_std")),
        _fmt(r.get("dice_global")), _fmt(r.get("iou_global")), _fmt(r.get("hd95")), _fmt(r.get("assd")),
        _fmt(r.get("nsd")), _fmt(r.get("sensitivity")), _fmt(r.get("specificity")), _fmt(r.get("align_top1")),
        _fmt(r.get("drop_shuffled")), _fmt(r.get("drop_swapped")),
    ]  # fmt: skip


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build(params, metrics: list[dict]) -> tuple[list[dict], list[dict]]:
    """(our rows sorted by dataset, method, fraction; published rows for the datasets present)."""
    ds_info = {}
    for name, d in params.datasets.items():
        ds_info[name] = (d.kind, str(d.source))
    ours = [row_for(m, ds_info.get(m["dataset"], ("?", "?"))[1]) for m in metrics]
    ours.sort(key=lambda r: (r["dataset"], r["method"], r["fraction_pct"], r["regime"]))
    present = {r["dataset"] for r in ours}
    pub = published_rows({k: v for k, v in ds_info.items() if k in present})
    return ours, pub


def markdown(ours: list[dict], pub: list[dict], metrics: list[dict], overlays: dict[str, dict]) -> str:
    out = io.StringIO()
    w = out.write
    w("# medref evaluation report\n\n")
    w(
        "Dice/IoU/NSD/sensitivity/specificity in %, HD95/ASSD in pixels. **Per-image** = mean ± std over images "
        "(LViT convention); **global** = pooled over all pixels of the split (GuideDecoder convention). "
        "Empty masks: both empty = Dice 1 / distance 0; exactly one empty = Dice 0 / distance = image diagonal "
        "(see `pipeline_src/evaluate/metrics.py`).\n\n"
    )
    w(
        f"Rows marked **{PUBLISHED_LABEL}** (†) are numbers copied from papers, on the real datasets; they were not "
        "produced by this pipeline and use the convention of their paper (the other convention is left blank).\n\n"
    )
    for ds in sorted({r["dataset"] for r in ours}):
        rows = [r for r in ours if r["dataset"] == ds] + [p for p in pub if p["dataset"] == ds]
        src = next(r["data_source"] for r in ours if r["dataset"] == ds)
        w(f"## {ds} (data source: {src})\n\n")
        if "synthetic" in src:
            w(
                "> Our numbers here are on **synthetic** data: they test the pipeline, and are not comparable "
                "with the published rows.\n\n"
            )
        w(_md_table(TABLE_HEAD, [_table_cells(r) for r in rows]) + "\n\n")
    if not ours:
        w("_No regime metrics found._\n\n")
    w("![Dice vs labelled fraction](dice_vs_fraction.png)\n\n")
    for m in sorted((m for m in metrics if m.get("per_class")), key=lambda m: m["regime"]):
        from pipeline_src.evaluate.multiclass import format_table

        w(f"## Per-class Dice (%) and HD95 (mm), {m['regime']} ({m['dataset']}, {m.get('eval_split')}: "
          f"{m.get('n_cases')} cases, 3-D per case)\n\n" + format_table(m) + "\n")
    regions = _region_table(metrics)
    if regions:
        w("## Per-region Dice (%) by the lung region the text names (n in brackets)\n\n" + regions + "\n\n")
    w("## Provenance of each row\n\n")
    w(
        "Each of our rows comes from one `metrics/<regime>.json`; its provenance block names the code and data "
        "that produced it (digests shortened to 12 hex digits; full values in report.csv).\n\n"
    )
    head = ("regime", "commit", "params", "shards", "labels", "model", "train commit", "train params", "split")
    prow = []
    for r in ours:
        commit = _short(r["commit"]) + (" (dirty)" if r["dirty"] else "") if r["commit"] else "—"
        tcommit = _short(r["train_commit"]) or "—"
        prow.append(
            [r["regime"], commit]
            + [_short(r[k]) or "—" for k in ("params_digest", "shards_digest", "labels_digest", "model_digest")]
            + [tcommit, _short(r["train_params_digest"]) or "—", _short(r["split_digest"]) or "—"]
        )
    w(_md_table(head, prow) + "\n\n")
    if overlays:
        w("## Samples (image | ground truth | prediction): best, median, worst by per-image Dice\n\n")
        for regime, figs in overlays.items():
            w(f"### {regime}\n\n")
            if figs["hist"]:
                w(f"![{regime} Dice histogram]({figs['hist']})\n\n")
            for f in figs["overlays"]:
                w(f"![{regime} {Path(f).stem}]({f})\n\n")
    return out.getvalue()


def _region_table(metrics: list[dict]) -> str:
    ms = [m for m in sorted(metrics, key=lambda m: m["regime"]) if m.get("per_region")]
    if not ms:
        return ""
    present = {k for m in ms for k in m["per_region"]}
    names = [k for k in (*REGIONS, "unknown") if k in present] + sorted(present - {*REGIONS, "unknown"})
    rows = []
    for m in ms:
        cells = [m["regime"]]
        for name in names:
            e = m["per_region"].get(name) or {}
            cells.append(f"{_fmt(_pct(e.get('dice')))} ({e.get('n', 0)})")
        rows.append(cells)
    return _md_table(["regime", *names], rows)


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        wr.writeheader()
        for r in rows:
            wr.writerow(
                {
                    k: ("" if r.get(k) is None else (round(r[k], 4) if isinstance(r[k], float) else r[k]))
                    for k in columns
                }
            )


def _dice_vs_fraction(out: Path, ours: list[dict], pub: list[dict]) -> None:
    long_cols = ("source", "dataset", "method", "fraction_pct", "dice", "dice_global", "iou", "iou_global")
    _write_csv(out / "dice_vs_fraction.csv", ours + pub, long_cols)
    # wide per dataset: one column per method, so `dvc plots` draws one line per method
    for ds in sorted({r["dataset"] for r in ours}):
        rows = [r for r in ours if r["dataset"] == ds]
        methods = sorted({r["method"] for r in rows})
        cols = ["fraction_pct"] + [c for m in methods for c in (m, f"{m}_global")]
        wide: dict[float, dict] = {}
        for r in rows:
            e = wide.setdefault(r["fraction_pct"], {"fraction_pct": r["fraction_pct"]})
            e[r["method"]], e[f"{r['method']}_global"] = r["dice"], r["dice_global"]
        d = out / "plots" / "dice_vs_fraction"
        d.mkdir(parents=True, exist_ok=True)
        _write_csv(d / f"{ds}.csv", [wide[k] for k in sorted(wide)], cols)
    pts = [{**r, "fraction": r["fraction_pct"] / 100} for r in ours]
    published = [
        {
            "dataset": p["dataset"],
            "fraction": p["fraction_pct"] / 100,
            "method": p["method"],
            "dice_per_image": p.get("dice"),
            "dice_global": p.get("dice_global"),
        }
        for p in pub
    ]
    plots.dice_vs_fraction(pts, published, out / "dice_vs_fraction.png")


def _copy_eval_figures(out: Path, eval_root: Path, ours: list[dict], n_overlays: int) -> dict[str, dict]:
    """Copy each regime's histogram and first ``n_overlays`` overlays (best, median, worst, then next ranks).

    Returns {regime: {"hist": relative path or None, "overlays": [relative paths]}} for regimes with figures.
    """
    shown: dict[str, dict] = {}
    order = {"best": 0, "median": 1, "worst": 2}
    for r in ours:
        src = Path(eval_root) / r["regime"]
        files: list[str] = []
        hist = None
        if (src / "dice_hist.png").exists():
            (out / "hist").mkdir(exist_ok=True)
            hist = f"hist/{r['regime']}.png"
            shutil.copyfile(src / "dice_hist.png", out / hist)
        ovs = sorted((src / "overlays").glob("*.png"), key=lambda p: (_rank(p), order.get(p.stem.split("_")[0], 9)))
        for p in ovs[:n_overlays]:
            dst = out / "overlays" / r["regime"] / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            files.append(dst.relative_to(out).as_posix())
        if files or hist:
            shown[r["regime"]] = {"hist": hist, "overlays": files}
    return shown


def _rank(p: Path) -> int:
    tail = p.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def index_html(md_ours: list[dict], pub: list[dict], shown: dict[str, dict], out: Path) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medref report</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "tr.pub{background:#fff4d6;font-style:italic}img{max-width:100%}</style></head><body>",
        "<h1>medref evaluation report</h1>",
        "<p>Per-image = mean ± std over images (LViT); global = pooled over pixels (GuideDecoder). "
        f"Rows shaded and marked <b>{e(PUBLISHED_LABEL)}</b> are copied from papers (real data). "
        "Full provenance: <a href='report.md'>report.md</a>, <a href='report.csv'>report.csv</a>.</p>",
    ]
    for ds in sorted({r["dataset"] for r in md_ours}):
        rows = [r for r in md_ours if r["dataset"] == ds] + [p for p in pub if p["dataset"] == ds]
        parts.append(f"<h2>{e(ds)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in TABLE_HEAD) + "</tr>")
        for r in rows:
            cls = "" if r["source"] == "ours" else " class='pub'"
            cells = [c.replace("**", "").replace("*", "") for c in _table_cells(r)]
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    if (out / "dice_vs_fraction.png").exists():
        parts.append("<h2>Dice vs labelled fraction</h2><img src='dice_vs_fraction.png'>")
    for regime, figs in shown.items():
        parts.append(f"<h2>{e(regime)}</h2>")
        if figs["hist"]:
            parts.append(f"<img src='{e(figs['hist'])}' style='max-width:420px'>")
        parts += [f"<div><img src='{e(f)}'></div>" for f in figs["overlays"]]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _studies_section(out: Path, studies_dir: Path) -> str:
    """Each study's tables (studies/<study>/study.md, headings one level down) with its figure copied beside."""
    parts = []
    for summary in sorted(Path(studies_dir).glob("*.json")):
        name = summary.stem
        md = Path(studies_dir) / name / "study.md"
        if not md.is_file():
            continue
        (out / "studies").mkdir(exist_ok=True)
        png = Path(studies_dir) / name / "dice_vs_fraction.png"
        if png.is_file():
            shutil.copyfile(png, out / "studies" / f"{name}_dice_vs_fraction.png")
        text = md.read_text().replace("](dice_vs_fraction.png)", f"](studies/{name}_dice_vs_fraction.png)")
        parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
    return ("\n\n## Studies (study@<study>: mean ± std over seeds, paired deltas, verdicts)\n\n" + "\n\n".join(parts)
            if parts else "")


def run(params, metrics_dir: Path, eval_root: Path, out_dir: Path, studies_dir: Path | None = None) -> dict:
    """Build reports/ from every metrics/<regime>.json and eval/<regime>/ figures, and the studies' tables."""
    metrics = load_metrics(metrics_dir)
    if not metrics:
        # an empty report would look like a finished one; nothing was evaluated
        raise MedrefError(f"{metrics_dir}: no regime metrics found (metrics/<regime>.json, written by `medref eval "
                          "<regime>`): train and evaluate a regime first (`dvc repro` or `medref train <regime> && "
                          "medref eval <regime>`), then re-run `medref report`")
    ours, pub = build(params, metrics)
    with atomic_dir(out_dir) as out:
        _write_csv(out / "report.csv", ours + pub, CSV_COLUMNS)
        _dice_vs_fraction(out, ours, pub)
        shown = _copy_eval_figures(out, eval_root, ours, params.report.n_overlays)
        studies = _studies_section(out, studies_dir) if studies_dir is not None else ""
        (out / "report.md").write_text(markdown(ours, pub, metrics, shown) + studies)
        (out / "index.html").write_text(index_html(ours, pub, shown, out))
    return {"rows": len(ours), "published_rows": len(pub)}

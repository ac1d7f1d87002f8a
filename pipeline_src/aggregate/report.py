"""report: one table of every regime × method, both Dice conventions, and where each number came from.

    medref report        # metrics/*.json + eval/<regime>/ -> reports/

reports/ holds
  report.md, report.csv        every evaluated regime, plus published reference rows marked "published, not ours"
  dice_vs_fraction.png         Dice vs labelled fraction per method (per-image solid, global dashed)
  dice_vs_fraction.csv         the same points, long form (dataset, method, fraction_pct, dice, ...)
  plots/dice_vs_fraction/<dataset>.csv   wide form (fraction_pct, <method>, <method>_global) for `dvc plots`
  overlays/<regime>/*.png, hist/<regime>.png   copied from eval/<regime>/ (the report never loads a model)
  curves/<regime>.png          loss and validation Dice per epoch, from models/<regime>/live/ (DVCLive); teacher-
                               student runs show the student and the EMA teacher beside the exported network
  studies/<study>.md, studies/<study>_dice_vs_fraction.png   each study's tables and verdicts, rendered alone
                               (what `snakemake --report` shows per study)
  index.html                   report.md rendered (markdown-it-py): the same content, a table of contents, images by
                               relative path (``medref report --self-contained`` inlines them as data URIs)

Numbers are shown in percent (Dice, IoU, NSD, sensitivity, specificity) and pixels (HD95, ASSD).
Published numbers are on the *real* datasets at 224×224; when our dataset source is synthetic the
report says so, because then the two are not comparable.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import mimetypes
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from pipeline_src.errors import MedrefError
from pipeline_src.evaluate import plots
from pipeline_src.evaluate.metric_specs import lookup, specs
from pipeline_src.evaluate.metrics import REGIONS
from pipeline_src.evaluate.multiclass import format_table
from pipeline_src.models.folder import LIVE, ModelFolder
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

# The metrics of the report's table and report.csv, in column order; their headers, report.csv names and units
# (percent 0-100 or pixels) are pipeline_src/evaluate/metric_specs.py's.
REPORT_METRICS = (
    "dice", "iou", "dice_global", "iou_global", "hd95", "assd", "nsd", "sensitivity", "specificity",
    "alignment.top1", "text_reliance.drop_shuffled", "text_reliance.drop_swapped",
)  # fmt: skip
CSV_HEAD = ("source", "dataset", "data_source", "method", "fraction_pct", "regime", "eval_split", "n")
CSV_TAIL = (
    "reference", "commit", "dirty", "params_digest", "shards_digest", "labels_digest", "model_digest",
    "train_commit", "train_params_digest", "split_digest",
)  # fmt: skip
REGIME_KEYS = ("regime", "dataset", "method", "fraction", "dice", "dice_global")


def csv_columns() -> tuple[str, ...]:
    """report.csv's columns: the row's origin, each metric (and its per-image std), then provenance."""
    cols = [c for s in specs(REPORT_METRICS) for c in ((s.col, f"{s.col}_std") if s.per_image_std else (s.col,))]
    return (*CSV_HEAD, *cols, *CSV_TAIL)


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
    for s in specs(REPORT_METRICS):
        row[s.col] = _pct(lookup(m, s.key)) if s.percent else lookup(m, s.key)
        if s.per_image_std:
            row[f"{s.col}_std"] = _pct(m.get(f"{s.key}_std")) if s.percent else m.get(f"{s.key}_std")
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


def table_head() -> list[str]:
    return ["source", "method", "labels %", "split", "n", *(s.report_label or s.header for s in specs(REPORT_METRICS))]


def _table_cells(r: dict) -> list[str]:
    src = "ours" if r["source"] == "ours" else f"**{PUBLISHED_LABEL}**"
    method = r["method"] if r["source"] == "ours" else f"*{r['method']}* †"
    metrics = [_pm(r.get(s.col), r.get(f"{s.col}_std")) if s.per_image_std else _fmt(r.get(s.col))
               for s in specs(REPORT_METRICS)]
    return [src, method, _fmt(r["fraction_pct"], 0), _fmt(r.get("eval_split")), _fmt(r.get("n")), *metrics]


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


def markdown(ours: list[dict], pub: list[dict], metrics: list[dict], overlays: dict[str, dict],
             studies: str = "", curves: dict[str, dict] | None = None) -> str:
    """report.md: the one source of the report; index.html is this text rendered (``render_html``)."""
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
    w("Files: [report.md](report.md) (this report), [report.csv](report.csv) (every row, full digests), "
      "[dice_vs_fraction.csv](dice_vs_fraction.csv).\n\n")
    for ds in sorted({r["dataset"] for r in ours}):
        rows = [r for r in ours if r["dataset"] == ds] + [p for p in pub if p["dataset"] == ds]
        src = next(r["data_source"] for r in ours if r["dataset"] == ds)
        w(f"## {ds} (data source: {src})\n\n")
        if "synthetic" in src:
            w(
                "> Our numbers here are on **synthetic** data: they test the pipeline, and are not comparable "
                "with the published rows.\n\n"
            )
        w(_md_table(table_head(), [_table_cells(r) for r in rows]) + "\n\n")
    if not ours:
        w("_No regime metrics found._\n\n")
    w("![Dice vs labelled fraction](dice_vs_fraction.png)\n\n")
    if studies:
        w(studies + "\n\n")
    if curves:
        w(_curves_section(curves))
    for m in sorted((m for m in metrics if m.get("per_class")), key=lambda m: m["regime"]):
        w(f"## Per-class Dice (%) and HD95 (mm), {m['regime']} ({m['dataset']}, {m.get('eval_split')}: "
          f"{m.get('n_cases')} cases, 3-D per case)\n\n" + format_table(m) + "\n")
    regions = _region_table(metrics)
    if regions:
        w("## Per-region Dice (%) by the lung region the text names (n in brackets)\n\n" + regions + "\n\n")
    if overlays:
        w("## Samples (image | ground truth | prediction): best, median, worst by per-image Dice\n\n")
        for regime, figs in overlays.items():
            w(f"### {regime}\n\n")
            if figs["hist"]:
                w(f"![{regime} Dice histogram]({figs['hist']})\n\n")
            for f in figs["overlays"]:
                w(f"![{regime} {Path(f).stem}]({f})\n\n")
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
    w(_md_table(head, prow) + "\n")
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


# ---- learning curves (DVCLive) ------------------------------------------------------------------------------------

# The per-epoch keys the curves draw: the loss and its parts, and validation Dice (exported network, and for the
# teacher-student methods the student and the EMA teacher). Other DVCLive keys (lr, grad norm, ...) stay in the log.
CURVE_PREFIXES = ("train_loss", "val_dice")
TEACHER_STUDENT = ("val_dice_student", "val_dice_teacher")
TS_METHODS = ("semi_medref", "mean_teacher", "cutmix_ssl")  # the methods whose logs should hold them


def read_live(model_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} of the curves drawn, from the model folder's DVCLive log (step = epoch here:
    train.py replays one DVCLive step per epoch row of its history). A folder without a log gives {}."""
    return {k: v for k, v in ModelFolder(model_dir).learning_curves().items() if k.startswith(CURVE_PREFIXES)}


def _learning_curves(out: Path, models_root: Path, ours: list[dict]) -> dict[str, dict]:
    """curves/<regime>.png for each run with a DVCLive log; {regime: {png, method, epochs, last values}}."""
    shown: dict[str, dict] = {}
    for r in ours:
        series = read_live(Path(models_root) / r["regime"])
        if not series:
            continue
        png = f"curves/{r['regime']}.png"
        plots.learning_curves(series, out / png, f"{r['regime']} ({r['method']}): per epoch, from models/"
                                                 f"{r['regime']}/{LIVE}", teacher_student=r["method"] in TS_METHODS)
        last = {k: v[-1][1] for k, v in series.items()}
        epochs = max(int(v[-1][0]) + 1 for v in series.values())
        shown[r["regime"]] = {"png": png, "method": r["method"], "epochs": epochs, "last": last,
                              "teacher_student": all(k in series for k in TEACHER_STUDENT)}
    return shown


def _curves_section(curves: dict[str, dict]) -> str:
    lines = ["## Learning curves (per epoch, from each run's DVCLive log)", "",
             "Training loss and validation Dice per epoch, read from `models/<run>/live/` (the files `dvc plots show` "
             "draws). For teacher-student runs the student and the EMA teacher are drawn beside the exported network "
             "where the log has them (`val_dice_student`, `val_dice_teacher`).", ""]
    head = ["run", "method", "epochs", "last train loss", "last val Dice", "student", "teacher"]
    rows = []
    for regime, c in curves.items():
        last = c["last"]
        rows.append([regime, c["method"], str(c["epochs"]), _fmt(last.get("train_loss"), 4),
                     _fmt(last.get("val_dice"), 4), _fmt(last.get("val_dice_student"), 4),
                     _fmt(last.get("val_dice_teacher"), 4)])
    lines += [_md_table(head, rows), ""]
    for regime, c in curves.items():
        lines += [f"![{regime} learning curves]({c['png']})", ""]
    return "\n".join(lines) + "\n"


# ---- studies -------------------------------------------------------------------------------------------------------


def _studies_section(out: Path, studies_dir: Path) -> str:
    """Each study's tables (studies/<study>/study.md, headings two levels down: each study is an entry under
    "Studies" in the page's contents) with its figure copied beside, and
    each study alone as studies/<study>.md + a self-contained studies/<study>.html (Snakemake's report shows it)."""
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
        alone = md.read_text().replace("](dice_vs_fraction.png)", f"]({name}_dice_vs_fraction.png)")
        (out / "studies" / f"{name}.md").write_text(alone)
        (out / "studies" / f"{name}.html").write_text(render_html(alone, out / "studies", self_contained=True,
                                                                  title=f"medref study {name}"))
        text = md.read_text().replace("](dice_vs_fraction.png)", f"](studies/{name}_dice_vs_fraction.png)")
        parts.append("\n".join("##" + line if line.startswith("#") else line for line in text.splitlines()))
    return ("## Studies (`study@<study>`: mean ± std over seeds, paired deltas, verdicts)\n\n"
            "Each study below is also a page of its own: `studies/<study>.html`.\n\n" + "\n\n".join(parts)
            if parts else "")


# ---- HTML: report.md rendered ----------------------------------------------------------------------------------------

# Phone (~390 px) and desktop widths: wide tables scroll inside their own box with the header row kept in view.
CSS = """
:root{color-scheme:light}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.45;color:#1d2329;
  overflow-wrap:break-word;
  max-width:1240px;margin:0 auto;padding:0 16px 48px}
h1{font-size:1.6em;margin:.8em 0 .3em}h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #d8dee4;
  padding-bottom:.2em}h3{font-size:1.08em;margin-top:1.4em}
nav.toc{background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;padding:.5em 1em;margin:1em 0}
nav.toc ol{margin:.2em 0;padding-left:1.3em}nav.toc li{margin:.1em 0}
nav.toc ol ol{display:flex;flex-wrap:wrap;gap:0 1em;padding-left:0;font-size:.92em;list-style:none}
.table-wrap{overflow:auto;max-height:75vh;width:fit-content;max-width:100%;margin:.6em 0 1.2em;
  border:1px solid #d8dee4;border-radius:4px}
table{border-collapse:separate;border-spacing:0;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e3e7eb;border-right:1px solid #eef1f4;padding:4px 8px;text-align:right;
  white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{position:sticky;top:0;z-index:1;background:#eef2f6;white-space:normal;min-width:4.5em;
  vertical-align:bottom;box-shadow:0 1px 0 #c9d1d9}
tbody td{background:#fff}tbody tr:nth-child(even) td{background:#fafbfc}
tr.pub td,tr.pub:nth-child(even) td{background:#fff4d6;font-style:italic}
td:first-child{position:sticky;left:0;z-index:0;box-shadow:1px 0 0 #d8dee4}
thead th:first-child{left:0;z-index:2;box-shadow:1px 1px 0 #c9d1d9}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
blockquote{margin:.8em 0;padding:.3em 1em;border-left:4px solid #e3b341;background:#fffbea}
code{background:#f0f2f4;padding:0 .25em;border-radius:3px;font-size:.92em}
@media (max-width:600px){body{padding:0 10px 32px}h1{font-size:1.35em}table{font-size:12px}}
"""


def _markdown_it():
    """CommonMark with tables; raw HTML off, so a ``<study>`` in the text is shown, not taken for a tag."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _inline_text(tok) -> str:
    """Plain text of one markdown-it inline token (what a reader sees of a heading, cell or paragraph)."""
    parts = []
    for c in tok.children or []:
        if c.type in ("text", "code_inline"):
            parts.append(c.content)
        elif c.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif c.type == "image":
            parts.append(c.content)
    return "".join(parts)


def _slug(text: str, used: dict[str, int]) -> str:
    base = "-".join(re.sub(r"[^\w\s-]", " ", text.lower()).split()) or "section"
    n = used.get(base, 0)
    used[base] = n + 1
    return base if n == 0 else f"{base}-{n + 1}"


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(md_text: str, base: Path, self_contained: bool = False, title: str = "medref report") -> str:
    """``md_text`` rendered by markdown-it-py as one page: heading anchors and a table of contents (h2, with h3
    beneath), tables wrapped so they scroll in their own box, published rows shaded. Images keep their relative
    paths (resolved against ``base``), or with ``self_contained`` are inlined as data URIs."""
    md = _markdown_it()
    tokens = md.parse(md_text)
    used: dict[str, int] = {}
    toc: list[tuple[int, str, str]] = []
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            text = _inline_text(tokens[i + 1])
            slug = _slug(text, used)
            t.attrSet("id", slug)
            if t.tag in ("h2", "h3"):
                toc.append((int(t.tag[1]), text, slug))
        elif t.type == "tr_open":
            first = next(x for x in tokens[i:] if x.type == "inline")
            if first.content == f"**{PUBLISHED_LABEL}**":
                t.attrSet("class", "pub")
        elif t.type == "inline" and self_contained:
            for c in t.children or []:
                src = c.attrGet("src") if c.type == "image" else None
                if src and "://" not in src and not src.startswith("data:") and (base / src).is_file():
                    c.attrSet("src", _data_uri(base / src))
    body = md.renderer.render(tokens, md.options, {})
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    nav = ""
    if len(toc) > 1:
        items, open_sub = [], False
        for level, text, slug in toc:
            if level == 3 and not items:
                level = 2
            if level == 2:
                if open_sub:
                    items.append("</ol>")
                    open_sub = False
                items.append(("</li>" if items else "") + f'<li><a href="#{slug}">{html.escape(text, quote=False)}</a>')
            else:
                if not open_sub:
                    items.append("<ol>")
                    open_sub = True
                items.append(f'<li><a href="#{slug}">{html.escape(text, quote=False)}</a></li>')
        items.append(("</ol>" if open_sub else "") + "</li>")
        nav = '<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>' + "".join(items) + "</ol></nav>\n"
    # the contents go right below the title (the first heading), before the text
    cut = body.find("</h1>")
    body = body[: cut + 5] + "\n" + nav + body[cut + 5 :] if cut >= 0 else nav + body
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


class _BlockText(HTMLParser):
    """(kind, plain text) of every heading, paragraph, table cell and list item of a page, and its images' alt
    texts; the table of contents (<nav>) is the page's own and left out."""

    KINDS = {**{f"h{i}": "heading" for i in range(1, 7)}, "p": "paragraph", "th": "table header",
             "td": "table cell", "li": "list item"}  # fmt: skip

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self.alts: list[str] = []
        self._stack: list[list[str]] = []
        self._nav = 0

    def handle_starttag(self, tag, attrs):
        if tag == "nav":
            self._nav += 1
        elif self._nav:
            return
        elif tag in self.KINDS:
            self._stack.append([])
        elif tag == "img":
            alt = dict(attrs).get("alt") or ""
            self.alts.append(alt)
            if self._stack:
                self._stack[-1].append(alt)

    def handle_endtag(self, tag):
        if tag == "nav":
            self._nav -= 1
        elif not self._nav and tag in self.KINDS and self._stack:
            text = "".join(self._stack.pop())
            self.blocks.append((self.KINDS[tag], " ".join(text.split())))
            if self._stack:  # a nested block (a paragraph in a list item) also counts towards its parent
                self._stack[-1].append(text)

    def handle_data(self, data):
        if self._stack and not self._nav:
            self._stack[-1].append(data)


def missing_from_page(md_text: str, page: str) -> list[str]:
    """What report.md says that ``page`` (index.html) does not: each heading, paragraph, table cell, list item and
    image of the markdown must be a block of the page with the same text. Empty list = nothing missing."""
    tokens = _markdown_it().parse(md_text)
    kinds = {"heading_open": "heading", "th_open": "table header", "td_open": "table cell",
             "list_item_open": "list item", "paragraph_open": "paragraph"}  # fmt: skip
    want: list[tuple[str, str]] = []
    alts: list[str] = []
    stack: list[str | None] = []
    for t in tokens:
        if t.nesting == 1:
            stack.append(kinds.get(t.type))
        elif t.nesting == -1 and stack:
            stack.pop()
        elif t.type == "inline":
            kind = next((k for k in reversed(stack) if k and k != "paragraph"), "paragraph")
            want.append((kind, " ".join(_inline_text(t).split())))
            alts += [c.content for c in t.children or [] if c.type == "image"]
    parser = _BlockText()
    parser.feed(page)
    have = Counter(parser.blocks)
    missing = []
    for k, text in want:
        if have[(k, text)] > 0:
            have[(k, text)] -= 1
        else:
            missing.append(f"{k}: {text[:120]}")
    have_alts = Counter(parser.alts)
    for a in alts:
        if have_alts[a] > 0:
            have_alts[a] -= 1
        else:
            missing.append(f"image: {a}")
    return missing


def run(params, metrics_dir: Path, eval_root: Path, out_dir: Path, studies_dir: Path | None = None,
        models_root: Path | None = None, self_contained: bool = False) -> dict:
    """Build reports/ from every metrics/<regime>.json, eval/<regime>/ figures, models/<regime>/live/ learning
    curves and the studies' tables: report.md first, then index.html rendered from it."""
    metrics = load_metrics(metrics_dir)
    if not metrics:
        # an empty report would look like a finished one; nothing was evaluated
        raise MedrefError(f"{metrics_dir}: no regime metrics found (metrics/<regime>.json, written by `medref eval "
                          "<regime>`): train and evaluate a regime first (`dvc repro` or `medref train <regime> && "
                          "medref eval <regime>`), then re-run `medref report`")
    ours, pub = build(params, metrics)
    with atomic_dir(out_dir) as out:
        _write_csv(out / "report.csv", ours + pub, csv_columns())
        _dice_vs_fraction(out, ours, pub)
        shown = _copy_eval_figures(out, eval_root, ours, params.report.n_overlays)
        studies = _studies_section(out, studies_dir) if studies_dir is not None else ""
        curves = _learning_curves(out, models_root, ours) if models_root is not None else {}
        text = markdown(ours, pub, metrics, shown, studies, curves)
        (out / "report.md").write_text(text)
        (out / "index.html").write_text(render_html(text, out, self_contained=self_contained))
    return {"rows": len(ours), "published_rows": len(pub), "learning_curves": len(curves)}

"""``medref``: one console script, one sub-command per pipeline stage.

Each sub-command parses its arguments, loads params.yaml, calls the stage's ``run`` and
nothing else. Heavy modules (torch, pyarrow) are imported inside the handlers so that
``medref --help`` stays fast.

    medref download qata          # data/raw/qata/
    medref preprocess qata        # data/shards/qata/
    medref pseudolabel qata       # data/labels/qata.parquet + data/labels/qata.agreement.json
    medref grid                   # workflow/grid.yaml: the study grid's runs, for dvc.yaml
    medref pretrain_text qata     # models/text/qata/ (MLM text encoder on the train texts)
    medref split qata_10pct       # data/splits/qata_10pct.json (every run at qata, 10 %)
    medref train qata_10pct       # models/qata_10pct/ (the headline: Semi-MedRef, 10 %, seed 0)
    medref eval qata_10pct        # metrics/qata_10pct.json + eval/qata_10pct/
    medref study qata             # studies/qata.json + studies/qata/
    medref report                 # reports/
    medref predict qata_10pct --images x.png --text "..." --out pred/   # not a stage: use a trained model
    medref export qata_10pct --format torchscript --out qata.pt          # + qata.pt.json (preprocessing)

Paths are relative to the repository root (the folder with dvc.yaml and params.yaml). Started
in a sub-folder of it, ``medref`` turns the paths given on its command line into absolute ones
and runs from the root, so default outputs, dataset sources and ``verify`` mean the same
wherever it is started. Outside any repository the current folder is the root.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline_src import numerics, paths
from pipeline_src.errors import MedrefError

DEFAULT_PARAMS = "params.yaml"
# Arguments that name files or folders: made absolute before medref moves to the repository root.
PATH_ARGS = ("params", "out", "raw", "shards", "labels", "split", "run_dir", "model", "eval_dir", "metrics",
             "eval_root", "texts_file", "summary", "texts_csv", "studies", "from_folder")


def _params_file(args: argparse.Namespace) -> Path:
    return Path(args.params or DEFAULT_PARAMS)


def _params(args: argparse.Namespace):
    from pipeline_src import params

    p = params.load(_params_file(args))
    numerics.require(p.base.cpu_numerics)  # the mode it will record is the one its kernels run (numerics.py)
    return p


def _project_params(args: argparse.Namespace):
    """(params, their name) for the commands that work outside a repository too (predict, export, regions): the
    ``--params`` file (an error when it is not there), else ./params.yaml when there is one, validated; else
    (None, "params.yaml"), and the command uses what the model folder records, else the defaults."""
    from pipeline_src import params

    f = _params_file(args)
    return (params.load(f) if args.params or f.is_file() else None), str(f)


def _move_to_repo_root(args: argparse.Namespace) -> None:
    here = Path.cwd()
    root = paths.repo_root(here)
    if root is None or root == here:
        return
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if value and value != "-":
            setattr(args, name, str(here / value))
    if getattr(args, "masks", None):
        args.masks = [str(here / m) for m in args.masks]
    if getattr(args, "images", None):
        args.images = [str(here / m) for m in args.images]
    print(f"[medref] running from the repository root {root}", file=sys.stderr)
    os.chdir(root)


def cmd_download(args: argparse.Namespace) -> None:
    from pipeline_src.data import download

    p = _params(args)
    p.dataset(args.dataset)
    download.run(p, args.dataset, Path(args.out or paths.raw_dir(args.dataset)))


def cmd_preprocess(args: argparse.Namespace) -> None:
    from pipeline_src.data import preprocess

    p = _params(args)
    p.dataset(args.dataset)
    preprocess.run(
        p,
        args.dataset,
        raw_dir=Path(args.raw or paths.raw_dir(args.dataset)),
        out_dir=Path(args.out or paths.shards_dir(args.dataset)),
    )


def cmd_pseudolabel(args: argparse.Namespace) -> None:
    from pipeline_src.labels import pseudolabel

    p = _params(args)
    p.dataset(args.dataset)
    pseudolabel.run(
        p,
        args.dataset,
        shards_dir=Path(args.shards or paths.shards_dir(args.dataset)),
        out_file=Path(args.out or paths.labels_file(args.dataset)),
        metrics_file=Path(args.metrics or paths.label_metrics_file(args.dataset)),
    )


def _grid_params(args: argparse.Namespace):
    """Params for a stage DVC runs from workflow/grid.yaml: under DVC (it sets DVC_STAGE), a stale grid file is
    refused, because the stage's tracked params came from it."""
    from pipeline_src import grid

    if os.environ.get("DVC_STAGE"):
        grid.require_current_grid(_params_file(args))
    return _params(args)


def cmd_pretrain_text(args: argparse.Namespace) -> None:
    from pipeline_src.train import pretrain_text

    p = _params(args)
    p.dataset(args.dataset)
    pretrain_text.run(
        p,
        args.dataset,
        shards_dir=Path(args.shards or paths.shards_dir(args.dataset)),
        out_dir=Path(args.out or paths.text_model_dir(args.dataset)),
    )


def cmd_split(args: argparse.Namespace) -> None:
    from pipeline_src.data import splits

    p = _params(args)
    dataset, _ = p.split_of(args.split_name)
    splits.run(
        p,
        args.split_name,
        shards_dir=Path(args.shards or paths.shards_dir(dataset)),
        out_file=Path(args.out or paths.split_file(args.split_name)),
    )


def cmd_grid(args: argparse.Namespace) -> None:
    from pipeline_src import grid, params
    from pipeline_src.utils.io import write_text

    doc = grid.grid_document(params.load_raw(_params_file(args)))
    text = grid.document_text(doc)
    out = Path(args.out or grid.GRID_FILE)
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            raise params.ParamsError(f"{out} is stale: run `medref grid`")
        print(f"[grid] {out} is current")
        return
    write_text(out, text)
    print(f"[grid] {len(doc['runs'])} runs, {len(doc['splits'])} splits, {len(doc['study_runs'])} studies -> {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from pipeline_src.aggregate import study

    p = _grid_params(args)
    study.run(
        p,
        args.study,
        metrics_dir=Path(args.metrics or paths.METRICS),
        eval_root=Path(args.eval_root or paths.EVAL),
        out_dir=Path(args.out or paths.study_dir(args.study)),
        summary_file=Path(args.summary or paths.study_file(args.study)),
    )


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline_src import launcher

    p = _grid_params(args)
    r = p.regime(args.regime)
    launcher.launch(
        p,
        args.regime,
        shards_dir=Path(args.shards or paths.shards_dir(r.dataset)),
        labels_file=Path(args.labels or paths.labels_file(r.dataset)),
        split_file=Path(args.split or paths.split_file(r.split)),
        out_dir=Path(args.out or paths.model_dir(args.regime)),
        run_dir=Path(args.run_dir or paths.run_dir(args.regime)),
        launcher=args.launcher,
        resume=not args.no_resume,
        params_file=_params_file(args),
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from pipeline_src.evaluate import evaluate

    p = _grid_params(args)
    r = p.regime(args.regime)
    evaluate.run(
        p,
        args.regime,
        model_dir=Path(args.model or paths.model_dir(args.regime)),
        shards_dir=Path(args.shards or paths.shards_dir(r.dataset)),
        labels_file=Path(args.labels or paths.labels_file(r.dataset)),
        metrics_file=Path(args.out or paths.metrics_file(args.regime)),
        out_dir=Path(args.eval_dir or paths.eval_dir(args.regime)),
    )


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline_src.aggregate import report

    p = _params(args)
    report.run(
        p,
        metrics_dir=Path(args.metrics or paths.METRICS),
        eval_root=Path(args.eval_root or paths.EVAL),
        out_dir=Path(args.out or paths.REPORTS),
        studies_dir=Path(args.studies or paths.STUDIES),
        models_root=Path(args.models or paths.MODELS),
        self_contained=args.self_contained,
    )


def cmd_regions(args: argparse.Namespace) -> None:
    from pipeline_src.labels import regions_cli

    def region_params() -> dict:  # read only when masks are given: texts alone never wait for the params
        project, _ = _project_params(args)
        return {} if project is None else project.pseudolabel.model_dump()

    regions_cli.main(texts=args.texts, texts_file=args.texts_file, masks=args.masks, region_params=region_params)


def cmd_verify(args: argparse.Namespace) -> None:
    from pipeline_src import verify

    ok = (verify.verify_from(Path(args.from_folder), args.regime, keep=args.keep) if args.from_folder
          else verify.verify(args.regime, keep=args.keep))
    if not ok:
        raise SystemExit(1)


def cmd_provenance(args: argparse.Namespace) -> None:
    import json

    from pipeline_src import verify

    print(json.dumps(verify.provenance(args.regime), indent=2, sort_keys=True))


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline_src.inference import predict

    project, source = _project_params(args)
    predict.run(args.model, args.images, Path(args.out), text=args.text,
                texts_file=Path(args.texts_csv) if args.texts_csv else None, threshold=args.threshold,
                probs=args.probs, overlay=args.overlay, tta=args.tta, device=args.device,
                batch_size=args.batch_size, project=project, project_source=source, engine=args.engine)


def cmd_export(args: argparse.Namespace) -> None:
    from pipeline_src.inference import export

    project, source = _project_params(args)
    export.run(args.model, args.format, Path(args.out), project=project, project_source=source)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="medref", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=None, help=f"params file (default: {DEFAULT_PARAMS})")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--params", default=argparse.SUPPRESS, help="params file (default: params.yaml)")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("download", cmd_download, "Fetch/verify/extract (or synthesise) a dataset into data/raw/<dataset>/.")
    sp.add_argument("dataset")
    sp.add_argument("--out", help="output folder (default: data/raw/<dataset>)")

    sp = add("preprocess", cmd_preprocess, "Validate raw pairs and write Parquet shards + manifest.json.")
    sp.add_argument("dataset")
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>)")
    sp.add_argument("--out", help="shards folder (default: data/shards/<dataset>)")

    sp = add("pseudolabel", cmd_pseudolabel, "Six-region position labels from text and from masks, + agreement metrics.")
    sp.add_argument("dataset")
    sp.add_argument("--shards", help="shards folder (default: data/shards/<dataset>)")
    sp.add_argument("--out", help="labels file (default: data/labels/<dataset>.parquet)")
    sp.add_argument("--metrics", help="agreement metrics (default: data/labels/<dataset>.agreement.json)")

    sp = add("pretrain_text", cmd_pretrain_text, "Masked-language-model text encoder on a dataset's train texts.")
    sp.add_argument("dataset")
    sp.add_argument("--shards", help="shards folder (default: data/shards/<dataset>)")
    sp.add_argument("--out", help="model folder (default: models/text/<dataset>)")

    sp = add("split", cmd_split, "Seeded, nested labelled/unlabelled selection of training ids at one fraction.")
    sp.add_argument("split_name", metavar="split", help="<dataset>_<pct>pct, e.g. qata_10pct (shared by every run at that fraction)")
    sp.add_argument("--shards", help="shards folder (default: data/shards/<dataset>)")
    sp.add_argument("--out", help="split file (default: data/splits/<split>.json)")

    sp = add("grid", cmd_grid, "Write workflow/grid.yaml, the study grid's runs that dvc.yaml iterates over.")
    sp.add_argument("--out", help="grid file (default: workflow/grid.yaml)")
    sp.add_argument("--check", action="store_true", help="only check that the grid file is current")

    sp = add("study", cmd_study, "Aggregate a study's runs: mean +- std, paired deltas + CIs, verdicts, plots.")
    sp.add_argument("study")
    sp.add_argument("--metrics", help="metrics folder (default: metrics)")
    sp.add_argument("--eval-root", help="per-run eval folders (default: eval)")
    sp.add_argument("--out", help="study folder (default: studies/<study>)")
    sp.add_argument("--summary", help="study metrics JSON (default: studies/<study>.json)")

    sp = add("train", cmd_train, "Train the regime's model (in-process, or on SLURM through submitit).")
    sp.add_argument("regime")
    sp.add_argument("--shards")
    sp.add_argument("--labels")
    sp.add_argument("--split")
    sp.add_argument("--out", help="model folder (default: models/<regime>)")
    sp.add_argument("--run-dir", help="checkpoints and job logs (default: runs/<regime>)")
    sp.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default=None,
        help="where to run; default $MEDREF_LAUNCHER, else the cluster config, else local. Never a tracked param.",
    )
    sp.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")

    sp = add("eval", cmd_eval, "Evaluate a regime's model on its test split: metrics JSON, per-sample CSV, plots.")
    sp.add_argument("regime")
    sp.add_argument("--model")
    sp.add_argument("--shards")
    sp.add_argument("--labels")
    sp.add_argument("--out", help="metrics file (default: metrics/<regime>.json)")
    sp.add_argument("--eval-dir", help="per-sample CSV and plots (default: eval/<regime>)")

    sp = add("report", cmd_report, "Table (markdown + CSV), plots and HTML across every evaluated regime.")
    sp.add_argument("--metrics", help="metrics folder (default: metrics)")
    sp.add_argument("--eval-root", help="per-regime eval folders (default: eval)")
    sp.add_argument("--studies", help="study outputs (default: studies)")
    sp.add_argument("--models", help="model folders whose live/ (DVCLive) logs give the learning curves (default: models)")
    sp.add_argument("--out", help="report folder (default: reports)")
    sp.add_argument("--self-contained", action="store_true",
                    help="inline every image of index.html as a data URI, so the page can be mailed on its own")

    sp = add("regions", cmd_regions, "Print the 6-region vector of texts and/or mask PNGs, one JSON line each.")
    sp.add_argument("texts", nargs="*", help="report sentences")
    sp.add_argument("--texts-file", help="UTF-8 file with one text per line; - reads standard input")
    sp.add_argument("--masks", nargs="*", default=[], help="mask PNG paths")
    sp = add("verify", cmd_verify, "Re-run a regime's chain from scratch and check every hash against dvc.lock.")
    sp.add_argument("regime")
    sp.add_argument("--keep", action="store_true", help="keep the scratch clone for inspection")
    sp.add_argument("--from", dest="from_folder", metavar="FOLDER",
                    help="a published study folder (docs/results/<study>): re-run this row of it at a commit of main")

    sp = add("provenance", cmd_provenance, "Print the provenance blocks of a regime's model and metrics.")
    sp.add_argument("regime")

    sp = add("predict", cmd_predict, "Segment new images (PNG/JPEG/TIFF/DICOM) with a trained model; not a stage.")
    sp.add_argument("model", help="a regime (models/<regime>) or a model folder")
    sp.add_argument("--images", nargs="+", required=True, help="image files and/or folders of them")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--text", help="one report text for every image")
    g.add_argument("--texts", dest="texts_csv", help="CSV/xlsx of image name -> text (LViT/download conventions)")
    sp.add_argument("--out", required=True, help="output folder (replaced atomically)")
    sp.add_argument("--threshold", type=float, help="probability -> mask (default: the regime's eval params)")
    sp.add_argument("--probs", action="store_true", help="also write 16-bit probability maps")
    sp.add_argument("--overlay", action="store_true", help="also write overlay PNGs")
    sp.add_argument("--tta", choices=["flip"], default=None, help="test-time augmentation (text sides swapped)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    sp.add_argument("--batch-size", type=int, default=None, help="default: the eval params' batch size")
    sp.add_argument("--engine", choices=["auto", "torch", "onnx"], default="auto",
                    help="onnx: the folder's model.onnx (medref export --format onnx) with onnxruntime, no torch; "
                         "auto (default): onnx when the folder has a current export and --device is not cuda")

    sp = add("export", cmd_export, "Export a trained model to TorchScript or ONNX, with a preprocessing JSON.")
    sp.add_argument("model", help="a regime (models/<regime>) or a model folder")
    sp.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    sp.add_argument("--out", required=True, help="exported file (.pt / .onnx); <out>.json is its preprocessing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    here = os.getcwd()
    try:
        _move_to_repo_root(args)
        if getattr(args, "params", None):
            # pipeline_src's import read the mode from the repository's params.yaml; --params names another file,
            # and torch is not imported yet (handlers import it), so its mode can still take effect
            numerics.configure(*numerics.resolve(Path(args.params)))
        args.fn(args)
    except MedrefError as e:
        print(f"medref {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        os.chdir(here)  # main() is also called in-process (tests, the ablation runner)
    return 0


if __name__ == "__main__":
    sys.exit(main())

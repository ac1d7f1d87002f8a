"""`medref predict` speed on CPU against eval's inner loop on the same model, and its start-up to the first mask.

    .venv/bin/python bench/bench_predict.py               # 224^2, 24 images, the demo model config
    .venv/bin/python bench/bench_predict.py --n 4 --size 64 --out bench/results/bench_predict.json

One run, one model (the params' ``train.model``, random weights: speed does not depend on them), one batch size,
in one process, best of 2 after a warm-up:
- eval: ``load_predictor`` + ``evaluate.evaluate_predictor`` over the images as dataset items (forward + threshold
  + per-image counts, no surface distances), what ``medref eval`` runs; and the loop alone;
- predict: one ``inference.predict.run`` call on the same images as PNG files (checks, model load, decode,
  resize, forward, mask and region vector, PNGs and predictions.csv written); and its loop alone, estimated as
  (n - 1) / (call on n images - call on 1 image);
- start-up: the wall time of ``medref predict`` as a fresh process on one image, from the command to its exit
  (so an upper bound of "command to first mask").
Goals (issue "Use a trained model"): predict within 10 % of eval's images/s; first mask <= 2 s. The machine's load
average before and after is recorded: figures from a loaded machine are marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def make_model(folder: Path, size: int, params_file: Path) -> None:
    """A model folder of the params' architecture with random weights, recorded as trained at ``size``^2."""
    import torch

    from pipeline_src.models import build_model
    from pipeline_src.params import load

    mcfg = load(params_file).train.model
    torch.manual_seed(0)
    net = build_model(mcfg)
    folder.mkdir(parents=True)
    torch.save({"state_dict": net.state_dict(), "model_config": mcfg.model_dump(mode="json"), "method": "supervised",
                "regime": "bench"}, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"regime": "bench", "input": {"image_size": size,
                                                                                  "intensity": "bits"}}))


def images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(folder / f"img_{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="images")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_predict.json"))
    a = ap.parse_args()
    load0 = os.getloadavg()

    import torch

    from pipeline_src.evaluate.evaluate import evaluate_predictor
    from pipeline_src.inference import predict as P
    from pipeline_src.inference.predictor import load_predictor
    from pipeline_src.params import load

    threads = load(a.params).base.cpu_threads
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as tmp:
        tmp = Path(tmp)
        make_model(tmp / "model", a.size, Path(a.params))
        images(tmp / "images", a.n, a.size)
        torch.set_num_threads(threads)  # what eval and predict run with (base.cpu_threads)
        from PIL import Image

        items = [{"id": p.stem, "image": torch.from_numpy(np.asarray(Image.open(p), np.float32)[None] / 255.0),
                  "mask": torch.zeros(1, a.size, a.size), "text": TEXT} for p in sorted((tmp / "images").iterdir())]

        def eval_s() -> tuple[float, float]:
            """(model load + loop, loop) seconds of eval's inference on the items."""
            t = time.perf_counter()
            pred = load_predictor(tmp / "model")
            t1 = time.perf_counter()
            evaluate_predictor(pred, items, batch_size=a.batch_size, distances=False, progress=False)
            return time.perf_counter() - t, time.perf_counter() - t1

        project = load(Path(a.params))  # what the CLI hands predict (its --params)

        def predict_s(files: list[str], out: str) -> float:
            t = time.perf_counter()
            P.run(str(tmp / "model"), files, tmp / out, text=TEXT, batch_size=a.batch_size, device="cpu",
                  project=project, project_source=a.params, progress=False)
            return time.perf_counter() - t

        folder, first = [str(tmp / "images")], [str(sorted((tmp / "images").iterdir())[0])]
        # best of 2 after a warm-up of each (one-off costs: oneDNN primitives, tokenizer vocabulary, file caches)
        eval_s(), predict_s(folder, "warm")
        ev = [eval_s() for _ in range(2)]
        eval_call, eval_loop = min(e[0] for e in ev), min(e[1] for e in ev)
        pred_call = min(predict_s(folder, f"p{k}") for k in range(2))
        pred_one = min(predict_s(first, f"one{k}") for k in range(2))
        eval_ips, call_ips = a.n / eval_call, a.n / pred_call
        # predict's loop alone: the call on n images less the call on one cancels the per-call cost
        predict_ips = (a.n - 1) / max(pred_call - pred_one, 1e-9)
        eval_loop_ips = a.n / eval_loop

        one = sorted((tmp / "images").iterdir())[0]
        cmd = [str(Path(sys.executable).with_name("medref")), "--params", a.params, "predict", str(tmp / "model"),
               "--images", str(one), "--text", TEXT, "--out", str(tmp / "one"), "--device", "cpu"]
        envv = {**os.environ, "PYTHONPATH": str(REPO)}
        starts = []
        for k in range(3):
            t = time.perf_counter()
            res = subprocess.run([*cmd[:-3], str(tmp / f"one{k}"), *cmd[-2:]], env=envv, capture_output=True,
                                 text=True)
            starts.append(time.perf_counter() - t)
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
        startup = min(starts)
    load1 = os.getloadavg()
    out = {"size": a.size, "n": a.n, "batch_size": a.batch_size, "threads": threads,
           "eval_images_per_s": round(eval_ips, 2), "predict_images_per_s": round(call_ips, 2),
           "predict_over_eval": round(call_ips / eval_ips, 3), "eval_loop_images_per_s": round(eval_loop_ips, 2),
           "predict_loop_images_per_s": round(predict_ips, 2),
           "predict_loop_over_eval_loop": round(predict_ips / eval_loop_ips, 3), "startup_to_first_mask_s": round(startup, 2),
           "startup_runs_s": [round(s, 2) for s in starts], "load_before": load0, "load_after": load1,
           "cpus": os.cpu_count()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"predict on CPU at {a.size}^2, {a.n} images, batch {a.batch_size}, {threads} threads, "
          f"load {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"eval (load + inner loop)   {eval_ips:8.2f} images/s")
    print(f"predict (one call)         {call_ips:8.2f} images/s   ratio {call_ips / eval_ips:.3f} (goal >= 0.9)")
    print(f"eval inner loop alone      {eval_loop_ips:8.2f} images/s")
    print(f"predict loop alone         {predict_ips:8.2f} images/s   ratio {predict_ips / eval_loop_ips:.3f} "
          "(call on n less call on 1)")
    print(f"start-up to first mask {startup:.2f} s (best of 3, whole command on 1 image; goal <= 2 s)")


if __name__ == "__main__":
    main()

"""GPU readiness check: the paper's configuration on one GPU, as one prepared run (sized for < 8 min on one GPU).

    .venv/bin/python bench/gpu_check.py          # the GPU machine: paper sizes, the real QaTa sample
    .venv/bin/python bench/gpu_check.py --tiny   # CPU, tiny sizes (CI: tests/test_bench_smoke.py), ~1-2 min

1. **Throughput of the paper config**: ConvNeXt-Tiny image encoder + a BERT-base-sized text tower (12 x 768,
   random init, frozen, the official pooling and MLP head, context 24), 224^2, labelled + unlabelled batches of
   32 + 32, one Semi-MedRef step (teacher forward + student forward/backward + AdamW + EMA). On CUDA: bf16
   autocast and channels_last, as `medref train` does, with ``torch.compile`` off and on. Reports samples/s
   (median step), peak memory and an MFU estimate: FLOPs of one step counted by ``torch.utils.flop_counter``
   over the device's peak dense bf16 FLOP/s (``--peak-tflops``; default 989 for an H100/H200 SXM).
2. **CPU fp32 vs accelerator forward** on the same weights: max and mean absolute difference of the
   probabilities, against stated tolerances (bf16 keeps ~3 significant digits).
3. **A 2-epoch semi_medref through the pipeline** on the real QaTa sample (../shared/data/qata_sample): a
   scratch clone of this repository, params for the run, ``medref grid`` and ``dvc repro eval@qata_10pct`` --
   the figure comes out of a pipeline stage. Wall time and Dice are printed.

Prints one JSON object at the end (also written to bench/results/gpu_check.json) with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_train import TEXTS, fake_batch  # noqa: E402  (the same report-like batches)

SHARED_QATA = REPO.parent / "shared" / "data" / "qata_sample"
BF16_TOL = {"max": 0.05, "mean": 0.005}  # |p_cpu_fp32 - p_bf16| on sigmoid probabilities

SIZES = {
    "paper": {"image": 224, "batch": 32, "encoder": "convnext_tiny", "bert": (12, 768, 12, 3072), "steps": 12,
              "warmup": 3, "epochs": 2, "max_steps": None},
    "tiny": {"image": 64, "batch": 2, "encoder": "resnet10t", "bert": (2, 32, 2, 64), "steps": 2, "warmup": 1,
             "epochs": 1, "max_steps": 2},
}


def _bert_folder(dest: Path, layers: int, width: int, heads: int, ffn: int) -> Path:
    """A random-init BERT saved in transformers format, with the CXR-BERT fixture's vocabulary when it is here."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    vocab_src = REPO.parent / "shared" / "fixtures" / "hf" / "BiomedVLP-CXR-BERT-specialized" / "vocab.txt"
    dest.mkdir(parents=True, exist_ok=True)
    if vocab_src.is_file():
        shutil.copyfile(vocab_src, dest / "vocab.txt")
    else:
        words = sorted({w.strip(".,").lower() for t in TEXTS for w in t.split()})
        (dest / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    n_vocab = len((dest / "vocab.txt").read_text().splitlines())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=n_vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=512)
    BertForMaskedLM(cfg).save_pretrained(dest)
    return dest


def _model_params(size: dict, bert: Path) -> dict:
    return {"image_encoder": size["encoder"], "text_weights": f"hf-dir:{bert}", "text_pooling": "official",
            "text_head": "mlp", "text_train": "frozen", "context_length": 24}


def throughput(size: dict, bert: Path, device, compile_: bool, peak_tflops: float) -> dict:
    """Median Semi-MedRef step time, samples/s, peak memory and MFU, as `medref train` runs a step."""
    import contextlib

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline_src.models import build_model
    from pipeline_src.models.text import build_tokenizer
    from pipeline_src.params import load
    from pipeline_src.train.methods import METHODS
    from pipeline_src.train.train import Schedules, param_groups

    base = load(REPO / "params.yaml").train
    mcfg = base.model.model_copy(update=_model_params(size, bert))
    cfg = base.model_copy(update={"model": mcfg, "batch_size": size["batch"], "unlabelled_batch_size": size["batch"]})
    torch.manual_seed(0)
    model = build_model(mcfg).to(device)
    autocast = contextlib.nullcontext
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

        def autocast():  # noqa: E306 - bf16 needs no GradScaler
            return torch.autocast("cuda", dtype=torch.bfloat16)
    n = size["warmup"] + size["steps"]
    sched = Schedules(lr=np.full(n, cfg.lr), momentum=np.full(n, 0.99), unsup=np.full(n, cfg.ssl.unsup_weight))
    method = METHODS["semi_medref"](cfg, model, sched, build_tokenizer(mcfg.context_length, mcfg.text_weights),
                                    autocast)
    if compile_:
        method.student.compile()
    opt = torch.optim.AdamW(param_groups(method.student, cfg.weight_decay), lr=cfg.lr,
                            foreach=device.type != "cuda" or None)
    method.train()
    g = torch.Generator().manual_seed(0)

    def to(b):
        return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in b.items()}

    lab, unl = to(fake_batch(size["batch"], size["image"], g)), to(fake_batch(size["batch"], size["image"], g))

    def step(i):
        loss, _ = method.loss(i, lab, unl, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(i)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= size["warmup"]:
            times.append(time.perf_counter() - t)
    with FlopCounterMode(display=False) as fc:  # eager FLOPs of one step (compile does not change the math)
        step(n - 1)
    s = float(np.median(times))
    flops = float(fc.get_total_flops())
    out = {"compile": compile_, "ms_per_step": round(s * 1000, 1), "samples_per_s": round(2 * size["batch"] / s, 2),
           "tflop_per_step": round(flops / 1e12, 3)}
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["mfu"] = round(flops / s / (peak_tflops * 1e12), 4)
    return out


def parity(size: dict, bert: Path, device) -> dict:
    """The same weights forward in CPU fp32 and on ``device`` (bf16 autocast on CUDA, or on CPU)."""
    import torch

    from pipeline_src.models import build_model
    from pipeline_src.models.params import ModelParams
    from pipeline_src.models.text import build_tokenizer

    mcfg = ModelParams.model_validate(_model_params(size, bert))
    torch.manual_seed(0)
    net = build_model(mcfg).eval()
    tok = build_tokenizer(mcfg.context_length, mcfg.text_weights)
    b = fake_batch(4, size["image"], torch.Generator().manual_seed(1))
    tokens = tok(b["texts"])
    with torch.no_grad():
        ref = torch.sigmoid(net(b["images"], tokens)["logits"].float())
        net = net.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = torch.sigmoid(net(b["images"].to(device), tokens.to(device))["logits"].float()).cpu()
    d = (ref - got).abs()
    res = {"device": f"{device.type} bf16", "max_abs": round(float(d.max()), 5), "mean_abs": round(float(d.mean()), 6),
           "tolerance": BF16_TOL}
    res["ok"] = res["max_abs"] <= BF16_TOL["max"] and res["mean_abs"] <= BF16_TOL["mean"]
    return res


def pipeline_run(size: dict, bert: Path, tiny: bool) -> dict:
    """2-epoch semi_medref at 10 % (tiny: a 2-step run on the synthetic data) in a scratch clone, by the pipeline."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="medref-gpu-check-"))
    try:
        clone = work / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        p = yaml.safe_load((clone / "params.yaml").read_text())
        if not tiny:
            if not SHARED_QATA.is_dir():
                return {"skipped": f"{SHARED_QATA} not found"}
            p["datasets"]["qata"]["source"] = str(SHARED_QATA)
        p["preprocess"]["image_size"] = size["image"]
        p["studies"] = {"qata": {**p["studies"]["qata"], "fractions": [0.1], "methods": ["semi_medref"], "seeds": [0],
                                 "full": {}}}
        p["train"].update({"epochs": size["epochs"], "max_steps": size["max_steps"], "batch_size": size["batch"],
                           "unlabelled_batch_size": size["batch"]})
        p["train"]["model"].update(_model_params(size, bert))
        p["train"]["ssl"].update({"burn_in_epochs": 0.5, "ramp_epochs": 0.5})
        (clone / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(clone), "MEDREF_LAUNCHER": "local"}
        subprocess.run([str(Path(sys.executable).parent / "medref"), "grid"], cwd=clone, env=env, check=True,
                       capture_output=True)
        t = time.perf_counter()
        r = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "eval@qata_10pct"], cwd=clone, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"dvc repro eval@qata_10pct failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        m = json.loads((clone / "metrics" / "qata_10pct.json").read_text())
        return {"wall_s": round(wall, 1), "dice": m["dice"], "dice_global": m["dice_global"], "method": m["method"],
                "device": m["provenance"]["device"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on CPU (the CI smoke run)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device peak dense bf16 TFLOP/s, for the MFU")
    ap.add_argument("--skip-pipeline", action="store_true", help="only the throughput and parity checks")
    a = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() and not a.tiny
    size = SIZES["tiny" if a.tiny or not cuda else "paper"]
    device = torch.device("cuda" if cuda else "cpu")
    load_before = os.getloadavg()
    out: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "size": "paper" if cuda else "tiny",
                 "torch": torch.__version__, "load_before": [round(x, 2) for x in load_before]}
    print(f"[gpu_check] {out['device']}, sizes {out['size']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bert = _bert_folder(Path(tmp) / "bert", *size["bert"])
        out["throughput"] = [throughput(size, bert, device, False, a.peak_tflops)]
        if cuda:  # compile on CPU costs minutes and measures nothing the GPU run needs
            out["throughput"].append(throughput(size, bert, device, True, a.peak_tflops))
        for t in out["throughput"]:
            print(f"[gpu_check] compile={t['compile']}: {t}", flush=True)
        out["parity"] = parity(size, bert, device)
        print(f"[gpu_check] parity: {out['parity']}", flush=True)
        if not a.skip_pipeline:
            out["pipeline"] = pipeline_run(size, bert, tiny=not cuda)
            print(f"[gpu_check] pipeline: {out['pipeline']}", flush=True)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    if not out["parity"]["ok"]:
        raise SystemExit(f"parity out of tolerance: {out['parity']}")


if __name__ == "__main__":
    main()

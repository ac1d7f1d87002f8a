"""The trained-model folder ``models/<run>/`` (or a copy of one): its one writer and its one reader.

    models/<run>/
      model.pt          {state_dict, model_config, method, regime} of the exported network
      config.json       what train ran (regime, method, steps, batch sizes, train params) and ``input``: how the
                        training shards were made (image size, intensity rule, bit depth, size limits)
      provenance.json   model_sha256, the params digest, the input digests, git, the CPU record, pretrained weights
      MODEL.md          the model card (pipeline_src/models/card.py); eval completes it in eval/<run>/
      live/             DVCLive: per-epoch metrics (metrics.json, plots/metrics/<key>.tsv)
      model.onnx(.json) optional: `medref export --format onnx --out models/<run>/model.onnx`

    write(out_dir, ...)                         # train's export, atomically
    folder = ModelFolder("models/qata_10pct")
    blob, sha = folder.load_weights()           # model.pt checked against provenance.json's sha256
    folder.config(), folder.provenance(), folder.card(), folder.learning_curves()

The architecture comes from model.pt (``model_config``), not from the current params, so a folder pulled from a
collaborator's DVC remote loads without the data or the training code's params. Importing this module loads no
torch: study and report read the learning curves, and the onnx engine the digest, without it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from pipeline_src import paths
from pipeline_src.errors import MedrefError
from pipeline_src.utils.io import atomic_dir, save_torch, sha256_file, write_json

MODEL, CONFIG, PROVENANCE, CARD, LIVE = "model.pt", "config.json", "provenance.json", "MODEL.md", "live"
EXPORT = "model.onnx"  # `medref predict` uses it (onnxruntime) when its sidecar says it was made from this model.pt


def write(out_dir: Path, *, state_dict: dict, model_config: dict, method: str, regime: str, config: dict,
          provenance: dict, card: Callable[[str], str], live: Callable[[Path], None]) -> str:
    """models/<run>/ written atomically; returns model.pt's sha256. ``provenance`` gains ``model_sha256`` (loading
    checks it); ``card(sha256)`` is the card's text; ``live(folder)`` writes the DVCLive log into ``folder``."""
    with atomic_dir(out_dir) as tmp:
        save_torch({"state_dict": state_dict, "model_config": model_config, "method": method, "regime": regime},
                   tmp / MODEL)
        write_json(tmp / CONFIG, config)
        digest = sha256_file(tmp / MODEL)
        write_json(tmp / PROVENANCE, {"model_sha256": digest, **provenance})
        (tmp / CARD).write_text(card(digest))
        live(tmp / LIVE)
    return digest


def resolve(target: str | Path) -> Path:
    """A model folder given as a path, or a run's ``models/<run>``."""
    p = Path(target)
    if p.is_dir():
        return p
    run_dir = paths.model_dir(p.name)
    if run_dir.is_dir():
        return run_dir
    raise MedrefError(f"{target}: neither a model folder nor a regime with a model in {run_dir}; train it "
                      f"(`medref train {p.name}`) or fetch it (`dvc pull {run_dir}`)")


class ModelFolder:
    """Read access to one model folder. Each file is read when asked for; a damaged file is one MedrefError that
    names it and how to restore it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL

    @property
    def card_file(self) -> Path:
        return self.path / CARD

    @property
    def export_file(self) -> Path:
        return self.path / EXPORT

    def recover(self) -> str:
        return (f"restore it with `dvc checkout {self.path}` (or retrain: `dvc repro -f train@{self.path.name}` / "
                f"`medref train {self.path.name}`)")

    def has_weights(self) -> bool:
        return self.model_file.is_file()

    def require_weights(self, regime: str | None = None) -> None:
        if not self.has_weights():
            run = f"`medref train {regime}`" if regime else "`medref train` for this regime"
            raise MedrefError(f"{self.model_file}: no trained model (run {run} first)")

    def _json(self, name: str) -> dict | None:
        f = self.path / name
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except ValueError as e:
            raise MedrefError(f"{f}: not valid JSON ({e}); {self.recover()}") from e

    def config(self) -> dict:
        """config.json; {} for a folder without one."""
        return self._json(CONFIG) or {}

    def provenance(self) -> dict | None:
        """provenance.json; None for a folder without one (a model from elsewhere)."""
        return self._json(PROVENANCE)

    def trained_on_shards(self) -> str | None:
        """The shards digest the model was trained from (provenance.json inputs.shards)."""
        return ((self.provenance() or {}).get("inputs") or {}).get("shards")

    def train_record(self) -> dict | None:
        """What trained the model, for eval's provenance: its commit, params, data (split) and weights digests."""
        prov = self.provenance()
        return None if prov is None else {k: prov.get(k) for k in ("git", "params_digest", "inputs", "weights")}

    def weights_digest(self) -> str:
        return sha256_file(self.model_file)

    def verified_digest(self) -> str:
        """model.pt's sha256, checked against the one training recorded in provenance.json (older models have
        none)."""
        self.require_weights()
        expected = (self.provenance() or {}).get("model_sha256")
        digest = self.weights_digest()
        if expected is not None and digest != expected:
            raise MedrefError(f"{self.model_file}: corrupted or modified model file (sha256 {digest[:12]} != "
                              f"{expected[:12]} recorded in {PROVENANCE}); {self.recover()}")
        return digest

    def load_weights(self) -> tuple[dict, str]:
        """model.pt's dict {state_dict, model_config, method, regime}, sha-checked, and its digest."""
        import torch  # only loading the weights needs it

        digest = self.verified_digest()
        try:
            blob = torch.load(self.model_file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, pickle error...: all mean a damaged file
            raise MedrefError(f"{self.model_file}: unreadable model file ({type(e).__name__}: {e}); "
                              f"{self.recover()}") from e
        return blob, digest

    def card(self) -> str | None:
        """train's MODEL.md; None for a model trained before cards existed."""
        return self.card_file.read_text() if self.card_file.is_file() else None

    def learning_curves(self) -> dict[str, list[tuple[float, float]]]:
        """The DVCLive log (live/plots/metrics/<key>.tsv) as {key: [(step, value), ...]}, by file name; a malformed
        line costs its point, a folder without a log gives {}."""
        series: dict[str, list[tuple[float, float]]] = {}
        for f in sorted((self.path / LIVE / "plots" / "metrics").glob("*.tsv")):
            with open(f, newline="") as fh:
                pts = []
                for row in csv.DictReader(fh, delimiter="\t"):
                    try:
                        pts.append((float(row["step"]), float(row[f.stem])))
                    except (KeyError, TypeError, ValueError):
                        continue
            if pts:
                series[f.stem] = pts
        return series


def live_tsv(run: str, key: str) -> str:
    """A DVCLive series' file, as dvc.yaml's `plots:` names it."""
    return f"{paths.model_dir(run).as_posix()}/{LIVE}/plots/metrics/{key}.tsv"

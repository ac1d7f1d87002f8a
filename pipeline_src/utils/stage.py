"""The preamble every torch stage shares (train, eval, predict): its CPU threads and its device.

The rest of a stage's scaffold lives beside it in the base layer: the atomic output folder and the disk-full message
(``utils/io.py``: ``atomic_dir``, ``output_errors``), the strict model base (``utils/schema.py``) and the provenance
block (``pipeline_src/provenance.py``: ``stage_block``)."""

from __future__ import annotations

from pipeline_src.errors import MedrefError


def torch_device(requested: str, *, threads: int | None, unavailable: str = "") -> str:
    """``requested`` (auto | cpu | cuda) as the device the stage runs on, ``"cpu"`` or ``"cuda"``, after setting
    torch's CPU threads to ``threads`` (``base.cpu_threads``; None leaves torch's own count). On CPU the thread
    count can change the float bits, so every engine and launcher must run a stage with the same one.
    ``unavailable`` is the error when cuda is asked for and there is none; it names the setting (train.device,
    --device). auto never raises it: it is cuda where there is one, else cpu."""
    import torch  # imported here: the base layer loads no torch at import, and only torch stages call this

    if threads is not None:
        torch.set_num_threads(threads)
    if requested == "cuda" and not torch.cuda.is_available():
        raise MedrefError(unavailable)
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"

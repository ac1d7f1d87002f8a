"""The metrics eval writes to metrics/<run>.json, declared once: label, unit, direction, percent and format.

    from pipeline_src.evaluate.metric_specs import METRICS, lookup   # study and report read their columns here

``medref study`` (pipeline_src/aggregate/study.py) and ``medref report`` (pipeline_src/aggregate/report.py) take
every header, unit, number format and direction from this table; each only chooses which metrics its tables show,
and in what order. It imports nothing, so that those torch-free stages depend on this file alone, not on the
empty-mask rules and MONAI calls of pipeline_src/evaluate/metrics.py (which computes the values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricSpec:
    key: str  # its place in metrics/<run>.json, dotted into a nested block ("alignment.top1")
    label: str  # short name: the study's tables and Δ columns
    unit: str = ""  # "px" for distances; fractions and scores have none
    lower_is_better: bool = False  # a paired delta counts a win when it is negative
    percent: bool = False  # a fraction (0..1) that the report shows as 0-100
    digits: int = 3  # decimals in the study's tables: fractions to 3, pixels to 2 (the report shows all to 2)
    column: str = ""  # report.csv column, a flat name; "" = key
    report_label: str = ""  # the report table's header, where it spells the name out; "" = header
    per_image_std: bool = False  # the report shows mean ± std over images and writes <column>_std

    @property
    def header(self) -> str:
        """Label and unit: "HD95 px"."""
        return f"{self.label} {self.unit}" if self.unit else self.label

    @property
    def col(self) -> str:
        return self.column or self.key


METRICS: dict[str, MetricSpec] = {
    s.key: s
    for s in (
        # segmentation (pipeline_src/evaluate/metrics.py): per-image means, and global = pooled pixel counts
        MetricSpec("dice", "Dice", percent=True, report_label="Dice per-image", per_image_std=True),
        MetricSpec("dice_global", "Dice (global)", percent=True, report_label="Dice global"),
        MetricSpec("iou", "IoU", percent=True, report_label="IoU per-image", per_image_std=True),
        MetricSpec("iou_global", "IoU (global)", percent=True, report_label="IoU global"),
        MetricSpec("hd95", "HD95", unit="px", lower_is_better=True, digits=2),
        MetricSpec("assd", "ASSD", unit="px", lower_is_better=True, digits=2),
        MetricSpec("nsd", "NSD", percent=True),
        MetricSpec("sensitivity", "sensitivity", percent=True, report_label="Sens"),
        MetricSpec("specificity", "specificity", percent=True, report_label="Spec"),
        # image->text retrieval (pipeline_src/models/alignment.py)
        MetricSpec("alignment.top1", "i2t top-1", percent=True, column="align_top1", report_label="img→txt top1"),
        MetricSpec("alignment.region_agreement", "region agree", percent=True),
        # Med-DisSeg's probe: mean pairwise distance of the pooled features
        MetricSpec("dispersion.mean_pairwise_dist", "dispersion"),
        # text reliance (text-guided runs): Dice with deranged texts and with left/right swapped, and the drops
        MetricSpec("text_reliance.true_dice", "Dice (true text)", percent=True),
        MetricSpec("text_reliance.shuffled_dice", "Dice (shuffled)", percent=True),
        MetricSpec("text_reliance.drop_shuffled", "drop (shuffled)", percent=True, column="drop_shuffled",
                   report_label="Dice drop, shuffled text"),
        MetricSpec("text_reliance.swapped_dice", "Dice (L/R swapped)", percent=True),
        MetricSpec("text_reliance.drop_swapped", "drop (swapped)", percent=True, column="drop_swapped",
                   report_label="Dice drop, sides swapped"),
    )
}


def specs(keys) -> list[MetricSpec]:
    """The specs of ``keys``, in that order (a table's columns); looked up when called, not at import."""
    return [METRICS[k] for k in keys]


def lookup(metrics: dict, key: str) -> Any:
    """The value at a dotted ``key`` of a metrics dict, or None where a block or the value is absent."""
    node: Any = metrics
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node

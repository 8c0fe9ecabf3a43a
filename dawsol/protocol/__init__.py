"""The WSOL evaluation protocol, exactly (docs/protocol.md section 2).

Score maps (``prepare_scoremap``), boxes from score maps (``scoremap_boxes``, ``multiple_iou``),
split-level metrics from counts and histograms (``BoxAccumulator``, ``MaskAccumulator``), their
output files (``metrics_dict``, ``write_metrics``, ``write_curves``) and the standalone evaluator
of CAM files behind ``dawsol metrics`` (``dawsol.protocol.evaluator``).
"""

from dawsol.protocol.accumulators import BoxAccumulator, MaskAccumulator
from dawsol.protocol.boxes import best_ious, multiple_iou, scoremap_boxes
from dawsol.protocol.output import metrics_dict, write_curves, write_metrics, write_posthoc_curves
from dawsol.protocol.scoremap import cam_thresholds, check_scoremap, normalize_scoremap, prepare_scoremap

__all__ = [
    "BoxAccumulator",
    "MaskAccumulator",
    "best_ious",
    "cam_thresholds",
    "check_scoremap",
    "metrics_dict",
    "multiple_iou",
    "normalize_scoremap",
    "prepare_scoremap",
    "scoremap_boxes",
    "write_curves",
    "write_metrics",
    "write_posthoc_curves",
]

"""The post-hoc extractor records: each localization map of ``eval.cam_methods`` with every fact about it, torch-free.

An extractor maps a trained model's images to raw maps ``[B, h, w]`` (``dawsol.evaluation.posthoc``,
docs/posthoc.md): the model's own CAM, or a gradient method at a target layer (``eval.target_layer``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractorRecord:
    """One extractor: its report label, a lazy reference to its function and whether it is a gradient method
    (a map at the target layer, upsampled and min-max normalised per image) or the model's CAM (the cell's chain)."""

    name: str
    title: str  # the report's label
    function: str  # ``(model, images, labels, layer) -> [B, h, w]``, ``dawsol.evaluation.posthoc.Extractor``
    gradient: bool = True


EXTRACTORS: dict[str, ExtractorRecord] = {
    record.name: record
    for record in (
        ExtractorRecord("cam", "CAM", "dawsol.evaluation.posthoc:cam", gradient=False),
        ExtractorRecord("gradcam", "GradCAM", "dawsol.evaluation.posthoc:gradcam"),
        ExtractorRecord("gradcampp", "GradCAM++", "dawsol.evaluation.posthoc:gradcampp"),
        ExtractorRecord("pcs", "PCS", "dawsol.evaluation.posthoc:pcs"),
        ExtractorRecord("bagcams", "BagCAMs", "dawsol.evaluation.posthoc:bagcams"),
    )
}

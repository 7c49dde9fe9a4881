"""Evaluation metrics of the three Mask2Former tasks: panoptic quality, semantic IoU, COCO mask AP.

Every metric answers to the same protocol, with no common base class:
    update(...)        add one image (predictions first, then ground truth);
    merge(other)       add another metric's images in place (another process, another data shard);
    state() / load_state(state)
                       the accumulated numbers: PanopticQuality and SemanticMetrics give arrays that add up
                       across processes (all-reduce with SUM, then load_state); MaskAP gives a list of
                       per-image records to gather and concatenate;
    compute()          a flat dict name -> float, scores in percent (0..100), NaN where undefined.
"""

from model.metrics import instance, panoptic, semantic
from model.metrics.instance import MaskAP, ap_from_coco_files
from model.metrics.panoptic import PanopticQuality, id_to_rgb, pq_from_coco_files, rgb_to_id
from model.metrics.semantic import SemanticMetrics

# The headline scores an evaluation can report (per-class scores add '/<class>').
METRIC_NAMES = panoptic.SUMMARY + semantic.SUMMARY + instance.SUMMARY

__all__ = [
    "METRIC_NAMES",
    "MaskAP",
    "PanopticQuality",
    "SemanticMetrics",
    "ap_from_coco_files",
    "id_to_rgb",
    "pq_from_coco_files",
    "rgb_to_id",
]

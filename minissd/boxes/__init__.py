"""Box machinery of SSD: formats, encoding (eq. (2)), IoU, matching, NMS and post-processing.

Walkthroughs: docs/03-matching-and-encoding.md, docs/09-inference-and-nms.md.
"""
from .coder import VARIANCES, decode, encode
from .formats import Detections, cxcywh_to_xyxy, xyxy_to_cxcywh
from .ops import STRATEGIES, PriorIndex, batched_detect, build_prior_index, iou, match, match_batch, nms
from .reference import batched_detect_ref, iou_ref, match_ref, nms_ref

__all__ = [
    "VARIANCES", "STRATEGIES", "Detections",
    "xyxy_to_cxcywh", "cxcywh_to_xyxy", "encode", "decode",
    "iou", "PriorIndex", "build_prior_index", "match", "match_batch", "nms", "batched_detect",
    "iou_ref", "match_ref", "nms_ref", "batched_detect_ref",
]

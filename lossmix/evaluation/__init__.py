"""Detection evaluators: PASCAL VOC AP50 (devkit rules) and COCO box AP, with a common process/evaluate API."""
from lossmix.evaluation.coco import COCOEvaluator
from lossmix.evaluation.voc import VOC_METRICS, VOCDetectionEvaluator, evaluate_class, format_table, voc_ap

METRICS = (*VOC_METRICS, "coco")  # what TEST.METRIC may name besides "auto" (the dataset's own metric)

__all__ = ["COCOEvaluator", "VOCDetectionEvaluator", "evaluate_class", "format_table", "voc_ap"]

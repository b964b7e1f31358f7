"""Detection evaluators: PASCAL VOC AP50 (devkit rules) and COCO box AP, with a common process/evaluate API."""
from lossmix.evaluation.coco import COCOEvaluator
from lossmix.evaluation.voc import VOCDetectionEvaluator, evaluate_class, format_table, voc_ap

__all__ = ["COCOEvaluator", "VOCDetectionEvaluator", "evaluate_class", "format_table", "voc_ap"]

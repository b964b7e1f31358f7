"""lossmix: LossMix (supervision interpolation) for object detection, on torchvision's Faster R-CNN."""

__version__ = "0.1.0"

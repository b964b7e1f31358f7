"""Every config key, with a one-line comment. Names follow detectron2 where a counterpart exists.

``get_cfg()`` returns a fresh copy; YAML files may inherit with ``_BASE_`` and the command line
overrides with ``KEY VALUE`` pairs. An unknown key is an error that names the key.
"""
from fvcore.common.config import CfgNode as _FvCfgNode


def coerce_numbers(value, default):
    """``value`` with ints turned into floats where ``default`` holds a float (also inside lists / tuples).

    YAML and the command line read ``2`` as an int; yacs would reject it for a float key such as
    ``LOSSMIX.ALPHA`` (a type mismatch that also hid the range check). Booleans are never converted.
    """
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)) and len(default):
        template = default[0]
        return type(value)(coerce_numbers(v, template) for v in value)
    return value


class ConfigError(ValueError):
    """A config value out of range or of the wrong type: the message names the key, the value and what is allowed."""


def leaf_keys(node, prefix: str = "") -> list[str]:
    """Every full key under ``node`` (``"SOLVER.MAX_ITER"``, ...)."""
    keys = []
    for k, v in node.items():
        keys += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def unknown_key(full_key: str, root, where: str) -> KeyError:
    """``KeyError`` naming ``full_key`` and ``where`` it came from, with the closest existing keys."""
    import difflib

    known = leaf_keys(root)
    close = difflib.get_close_matches(full_key, known, n=3, cutoff=0.6)
    if not close:  # a typo in the last part only: compare within the same section
        head, _, last = full_key.rpartition(".")
        section = [k for k in known if k.rpartition(".")[0] == head]
        close = [f"{head}.{m}" for m in difflib.get_close_matches(
            last, [k.rpartition(".")[2] for k in section], n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return KeyError(f"unknown config key {full_key!r} ({where}){hint}")


def _describe(default) -> str:
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, int):
        return f"an integer, like {default}"
    if isinstance(default, float):
        return f"a number, like {default}"
    if isinstance(default, str):
        return f"a string, like {default!r}"
    if isinstance(default, (list, tuple)):
        return f"a {'tuple' if isinstance(default, tuple) else 'list'}, like {default!r}"
    return type(default).__name__


def check_value_type(full_key: str, value, default, where: str) -> None:
    """``ConfigError`` unless yacs would accept ``value`` for a key whose default is ``default`` (same type,
    list <-> tuple, or None on either side), naming the key, the value and the expected type."""
    if type(value) is type(default) or value is None or default is None:
        return
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return
    example = ""
    if isinstance(default, (list, tuple)) and isinstance(value, str):
        example = f", e.g. \"('{value}',)\" for one entry"
    raise ConfigError(f"{full_key} = {value!r} ({where}): expected {_describe(default)}{example}")


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode (yacs + ``_BASE_`` inheritance); unknown keys raise ``KeyError`` naming the key.

    Ints are accepted for float keys (see :func:`coerce_numbers`), from YAML files and overrides alike.
    """

    def merge_from_other_cfg(self, cfg_other):
        _coerce_tree(cfg_other, self, root=self)
        return super().merge_from_other_cfg(cfg_other)


def _coerce_tree(other, defaults, *, root, prefix: str = "") -> None:
    """Ints for float keys (:func:`coerce_numbers`); unknown keys and wrong types raise one line naming the key."""
    for key, value in list(other.items()):
        full_key = prefix + key
        if key == "_BASE_" and not prefix:
            continue
        if key not in defaults:
            raise unknown_key(full_key, root, "in a YAML file")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            _coerce_tree(value, defaults[key], root=root, prefix=full_key + ".")
        elif isinstance(defaults[key], dict):
            raise ConfigError(f"{full_key} = {value!r} (in a YAML file): expected a section of keys "
                              f"({', '.join(list(defaults[key])[:4])}, ...)")
        else:
            other[key] = coerce_numbers(_FvCfgNode._decode_cfg_value(value), defaults[key])  # "(1, 2)" as yacs reads it
            check_value_type(full_key, other[key], defaults[key], "in a YAML file")


_C = CfgNode()
_C.VERSION = 1  # config schema version

# ---------------------------------------------------------------------------- model
_C.MODEL = CfgNode()
_C.MODEL.DEVICE = "auto"  # "auto" (cuda when available, else cpu), "cpu" or "cuda"
_C.MODEL.WEIGHTS = ""  # local path: our checkpoint, a torchvision detector state dict or an ImageNet backbone state dict; "" = random init
_C.MODEL.PIXEL_MEAN = [0.485, 0.456, 0.406]  # RGB mean on the 0-1 scale (torchvision's ImageNet statistics)
_C.MODEL.PIXEL_STD = [0.229, 0.224, 0.225]  # RGB std on the 0-1 scale
_C.MODEL.META_ARCHITECTURE = "FasterRCNN"  # detector registered in lossmix.modeling.build: FasterRCNN | RetinaNet | FCOS (docs/detectors.md)

_C.MODEL.BACKBONE = CfgNode()
_C.MODEL.BACKBONE.NAME = "R50-FPN"  # one of R18-FPN, R34-FPN, R50-FPN, R101-FPN, MNV3-FPN
_C.MODEL.BACKBONE.NORM = "FrozenBN"  # FrozenBN (pretrained weights), BN or GN (training from scratch)
_C.MODEL.BACKBONE.TRAINABLE_LAYERS = 3  # ResNet stages trained (0-5); the rest are frozen; 5 when training from scratch
_C.MODEL.BACKBONE.RETURNED_LAYERS = [1, 2, 3, 4]  # ResNet stages feeding the FPN (strides 4, 8, 16, 32); [2, 3, 4] drops the costly stride-4 level

_C.MODEL.FPN = CfgNode()
_C.MODEL.FPN.OUT_CHANNELS = 256  # channels of every FPN level (and so of the RPN and box heads' inputs)
_C.MODEL.FPN.TOP_BLOCK = "maxpool"  # levels above the last stage: maxpool (P6 max-pooled, Faster R-CNN) | p6p7 (P6, P7 by stride-2 convs on P5, torchvision's RetinaNet / FCOS)

_C.MODEL.ANCHOR_GENERATOR = CfgNode()
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]  # anchor sizes (pixels) per FPN level
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]  # height/width ratios, one list for all levels or one per level

_C.MODEL.RPN = CfgNode()
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000  # proposals kept per level before NMS, training
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000  # proposals kept per level before NMS, inference
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000  # proposals kept per image after NMS, training
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000  # proposals kept per image after NMS, inference
_C.MODEL.RPN.NMS_THRESH = 0.7  # IoU threshold of the proposal NMS
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]  # anchors below the first are background, above the second foreground
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the RPN losses
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5  # largest foreground share of the sampled anchors

_C.MODEL.ROI_HEADS = CfgNode()
_C.MODEL.ROI_HEADS.NUM_CLASSES = 20  # object classes, background excluded
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # proposals sampled per image for the ROI losses
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25  # largest foreground share of the sampled proposals
_C.MODEL.ROI_HEADS.IOU_THRESHOLD = 0.5  # proposals with IoU >= this are foreground
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05  # detections below this score are dropped at inference
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5  # per-class NMS IoU threshold at inference
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE = 100  # detections kept per image at inference

_C.MODEL.ROI_BOX_HEAD = CfgNode()
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024  # width of the box head's two fully connected layers (torchvision's TwoMLPHead)
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7  # ROIAlign output size

# one-stage detectors (MODEL.META_ARCHITECTURE RetinaNet / FCOS); their classes: MODEL.ROI_HEADS.NUM_CLASSES
_C.MODEL.RETINANET = CfgNode()
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]  # anchors below the first are background, above the second foreground (between: ignored)
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05  # detections below this score are dropped at inference
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5  # class-wise NMS IoU threshold at inference
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000  # top-scoring anchors kept per level before NMS
_C.MODEL.RETINANET.DETECTIONS_PER_IMAGE = 100  # detections kept per image at inference
_C.MODEL.RETINANET.NORM = ""  # normalisation in the head's conv towers: "" (torchvision's RetinaNet) | "GN" (GroupNorm, 32 groups: torchvision's retinanet_resnet50_fpn_v2 head, detectron2's MODEL.RETINANET.NORM)

_C.MODEL.FCOS = CfgNode()
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5  # a location is foreground within this many strides of a box centre (and inside the box)
_C.MODEL.FCOS.SCORE_THRESH_TEST = 0.05  # detections below this score are dropped at inference (torchvision's 0.2 cuts AP's low-recall tail)
_C.MODEL.FCOS.NMS_THRESH_TEST = 0.6  # class-wise NMS IoU threshold at inference
_C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000  # top-scoring locations kept per level before NMS
_C.MODEL.FCOS.DETECTIONS_PER_IMAGE = 100  # detections kept per image at inference
_C.MODEL.FCOS.BBOX_REG_BIAS = 0.0  # initial bias of the box-distance conv, in strides (torchvision: 0 = zero-size boxes behind a ReLU, whose GIoU barely moves when training from scratch; 1 starts boxes 2 strides wide)

# ---------------------------------------------------------------------------- input
_C.INPUT = CfgNode()
_C.INPUT.MIN_SIZE_TRAIN = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)  # short side drawn from these, training
_C.INPUT.MAX_SIZE_TRAIN = 1333  # cap on the long side, training
_C.INPUT.MIN_SIZE_TEST = 800  # short side at inference
_C.INPUT.MAX_SIZE_TEST = 1333  # cap on the long side at inference
_C.INPUT.RANDOM_FLIP = 0.5  # probability of a horizontal flip, training
_C.INPUT.STRONG_AUGMENT_PROB = 0.0  # probability that a labelled training image also gets Adaptive Teacher's strong photometric augmentation (colour jitter, greyscale, blur, random erasing; boxes unchanged) after its weak geometry. AT trains its source on a weak and a strong view of each image; 0.5 gives the same mix at the same batch size. Not for the target views, whose strong view is always strong

# ---------------------------------------------------------------------------- datasets
_C.DATASETS = CfgNode()
_C.DATASETS.TRAIN = ()  # registered names of the labelled training sets (concatenated)
_C.DATASETS.TEST = ()  # registered names evaluated by --eval-only and TEST.EVAL_PERIOD
_C.DATASETS.TRAIN_USE_DIFFICULT = False  # keep VOC "difficult" boxes as training targets
_C.DATASETS.TRAIN_UNLABELED = ()  # registered names of unlabelled target-domain sets (DA only); their boxes never reach the student (unless DA.TARGET_LABELS ground_truth); DA.PSEUDO_LABEL_METRICS may score pseudo-labels against them
_C.DATASETS.CUSTOM_VOC = ()  # your own VOC-format folders, registered at start-up: "NAME:FOLDER:SPLIT" entries (e.g. "pets_train:/data/pets:train")
_C.DATASETS.CUSTOM_CLASSES = ()  # class names of every DATASETS.CUSTOM_VOC folder, in label order (e.g. ("cat", "dog"))
_C.DATASETS.CUSTOM_METRIC = "voc_area"  # AP50 of the DATASETS.CUSTOM_VOC sets: voc_area (VOC2010+ area) | voc07 (11-point)

_C.DATALOADER = CfgNode()
_C.DATALOADER.NUM_WORKERS = 2  # DataLoader worker processes (0 = load in the main process)
_C.DATALOADER.ON_BAD_SAMPLE = "error"  # training: "error" stops naming the file; "skip" leaves bad annotation files out at dataset build and replaces bad images, logging both to OUTPUT_DIR/bad_samples.jsonl
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # drop training images without boxes (kept by default: valid negatives)

# ---------------------------------------------------------------------------- LossMix
_C.LOSSMIX = CfgNode()
_C.LOSSMIX.MODE = "none"  # none | uniform (union, weights 1) | noise (partner blended, its boxes dropped) | lossmix
_C.LOSSMIX.METHOD = "mixup"  # mixup | cutmix | saliencymix
_C.LOSSMIX.ALPHA = 1.0  # lambda ~ Beta(ALPHA, ALPHA); the paper found 1.0 best
_C.LOSSMIX.PROB = 1.0  # probability that a training sample is mixed
_C.LOSSMIX.NOISE_RANGE = (0.0, 0.1)  # partner blend weight range for MODE noise
_C.LOSSMIX.MIN_VISIBLE = 0.1  # patch methods: instances whose visible fraction is below this are dropped
_C.LOSSMIX.BG_WEIGHT = 1.0  # loss weight of background anchors / proposals
_C.LOSSMIX.OFF_LAST_ITERS = 0  # mixing switched off for the last N training iterations (as GluonCV / YOLOX stop mixing for the last epochs); 0 = mix to the end
_C.LOSSMIX.SALIENCY = "fine_grained"  # saliencymix's map: fine_grained (Montabone-Soto, as the SaliencyMix paper) | spectral_residual; both find a bright object's peak at the 64-px working size (tests/test_mixing.py)
_C.LOSSMIX.PASTE = "stretch"  # cutmix / saliencymix: partner brought to the base's size by stretch (unequal x / y factors) | keep_aspect (one factor, cover then centre-crop)
_C.LOSSMIX.FORMULATION = "instance"  # instance (per-instance weights) | interpolate (lambda*L(x,A) + (1-lambda)*L(x,B); needs MODE uniform)

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CfgNode()
_C.SOLVER.IMS_PER_BATCH = 16  # images per iteration over all processes
_C.SOLVER.BASE_LR = 0.02  # learning rate after warm-up
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.WEIGHT_DECAY = 1e-4  # L2 weight decay
_C.SOLVER.MAX_ITER = 18000  # training iterations
_C.SOLVER.STEPS = (12000, 16000)  # iterations at which the LR is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1  # LR decay factor at each step
_C.SOLVER.WARMUP_ITERS = 100  # linear warm-up length
_C.SOLVER.WARMUP_FACTOR = 0.001  # LR factor at iteration 0 of the warm-up
_C.SOLVER.CLIP_GRADIENTS = 0.0  # max global gradient norm; 0 disables clipping
_C.SOLVER.AMP = True  # mixed precision when running on CUDA (ignored on CPU)
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints
_C.SOLVER.KEEP_CHECKPOINTS = 3  # periodic checkpoints kept on disk (the newest ones)
_C.SOLVER.MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops

_C.TEST = CfgNode()
_C.TEST.EVAL_PERIOD = 0  # iterations between evaluations during training; 0 = only at the end
_C.TEST.EVAL_PERIOD_DATASETS = ()  # the DATASETS.TEST evaluated every EVAL_PERIOD (learning curves); () = all; the end evaluates all
_C.TEST.METRIC = "auto"  # auto (from dataset metadata) | voc_area | voc07 | coco
_C.TEST.VOC07_RECALL_LEVELS = "arange"  # voc07 11-point recall levels: arange (np.arange(0, 1.1, 0.1), as detectron2 / py-faster-rcnn) | exact (k / 10)
_C.TEST.ON_BAD_SAMPLE = "error"  # evaluation: "error" stops naming the file; "skip" leaves bad annotation files out and scores a bad image as no detections (its boxes count as misses), logged to bad_samples.jsonl

_C.RECIPE = "auto"  # training recipe registered in lossmix.engine.recipes (supervised, adaptive_teacher); auto = adaptive_teacher when DA.ENABLED, else supervised
_C.OUTPUT_DIR = "./output"  # run folder: checkpoints, metrics.jsonl, eval/, config.yaml
_C.SEED = 0  # seeds data order, mixing draws and weight init (per rank)
_C.LOG_PERIOD = 20  # iterations between metrics.jsonl rows


# ---------------------------------------------------------------------------- domain adaptation
# Adaptive Teacher (Li et al., CVPR 2022) with LossMix domain mixing: lossmix.engine.recipes.adaptive_teacher.
# Each iteration takes SOLVER.IMS_PER_BATCH source images plus as many DATASETS.TRAIN_UNLABELED images.
_C.DA = CfgNode()
_C.DA.ENABLED = False  # train with the student / EMA-teacher recipe (RECIPE auto picks adaptive_teacher)
_C.DA.BURN_IN_ITERS = 20000  # source-only iterations; the teacher is then copied from the student
_C.DA.EMA_DECAY = 0.9996  # after burn-in, every step: teacher = decay * teacher + (1 - decay) * student
_C.DA.PSEUDO_THRESHOLD = 0.8  # teacher detections with score >= this become pseudo-labels
_C.DA.PSEUDO_BOX_WEIGHT = 0.0  # box-regression weight of pseudo-labels (x their weight); 0 = not computed at all
_C.DA.UNSUP_LOSS_WEIGHT = 1.0  # weight of the student's RPN / ROI losses on pseudo-labelled target images
_C.DA.DIS_LOSS_WEIGHT = 0.1  # weight of the image-level domain-discriminator loss (after burn-in)
_C.DA.DIS_FEATURE = 2  # FPN level the discriminator sees: backbone output str(DIS_FEATURE) ("0".."3", strides 4..32); an int as YAML reads "2" as 2
_C.DA.GRL_LAMBDA = 1.0  # gradient-reversal coefficient: the backbone receives -GRL_LAMBDA x the discriminator's gradient
_C.DA.MIX_PAIRS = ()  # LossMix pairs (need LOSSMIX.MODE != none): source_source, source_target, target_target
_C.DA.WEIGHT_BY_SCORE = False  # pseudo-label weight = teacher score (times lambda when mixed) instead of 1
_C.DA.TARGET_LABELS = "pseudo"  # what supervises the student's strong target views: pseudo (the teacher's pseudo-labels) | ground_truth (the target set's own annotations, weight 1, in place of pseudo-labels: an upper bound for experiments; needs annotated DATASETS.TRAIN_UNLABELED)
_C.DA.PSEUDO_LABEL_METRICS = "auto"  # precision / recall of the pseudo-labels at IoU 0.5 (overall, per class) in metrics.jsonl: auto (when DATASETS.TRAIN_UNLABELED has annotations; read apart, never given to the student) | off
_C.DA.NO_PSEUDO_LABEL_WARN_ITERS = 50  # warn when no teacher detection reaches DA.PSEUDO_THRESHOLD for this many iterations in a row; 0 = never


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults."""
    return _C.clone()

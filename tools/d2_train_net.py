#!/usr/bin/env python
"""Train or evaluate a detectron2 model with LossMix (detectron2's DefaultTrainer + the LossMix loader).

    python tools/d2_train_net.py --config-file configs/d2/synthetic_lossmix.yaml
    python tools/d2_train_net.py --config-file configs/d2/voc_faster_rcnn_R_50_FPN_lossmix.yaml --num-gpus 8
    python tools/d2_train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/d2/model_final.pth
    python tools/d2_train_net.py --config-file CFG --resume     # continue from OUTPUT_DIR/last_checkpoint

Needs detectron2 (see the README section "Using lossmix from detectron2"). Evaluation uses
detectron2's PascalVOCDetectionEvaluator / COCOEvaluator, chosen from the dataset's metadata.
"""
import os
import sys

try:
    import lossmix  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lossmix.d2 as lmd2  # noqa: E402  (raises an ImportError saying how to install detectron2)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from lossmix.d2.config import validate_lossmix_config  # noqa: E402
from lossmix.d2.datasets import register_lossmix_datasets  # noqa: E402


class Trainer(DefaultTrainer):
    """DefaultTrainer whose training loader pairs and mixes samples (``LOSSMIX.*``)."""

    @classmethod
    def build_train_loader(cls, cfg):
        return lmd2.build_lossmix_train_loader(cfg)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # continue the data stream where the checkpoint left it (detectron2 itself restarts it)
        lmd2.set_loader_start_iter(self._trainer.data_loader, self.start_iter)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "pascal_voc")
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
        raise NotImplementedError(f"no evaluator for {dataset_name!r} (evaluator_type {evaluator_type!r})")


def setup(args):
    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_lossmix_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    register_lossmix_datasets()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

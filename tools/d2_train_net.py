#!/usr/bin/env python
"""Train or evaluate a detectron2 model with LossMix; with DA.ENABLED, Adaptive Teacher + LossMix pairs.

    python tools/d2_train_net.py --config-file configs/d2/synthetic_lossmix.yaml
    python tools/d2_train_net.py --config-file configs/d2/synthetic_at_lossmix.yaml   # adaptation
    python tools/d2_train_net.py --config-file configs/d2/voc_faster_rcnn_R_50_FPN_lossmix.yaml --num-gpus 8
    python tools/d2_train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/d2/model_final.pth
    python tools/d2_train_net.py --config-file CFG --resume     # continue from OUTPUT_DIR/last_checkpoint

Supervised configs train with detectron2's DefaultTrainer and the LossMix loader; DA.ENABLED configs with
lossmix.d2.adaptation.AdaptiveTeacherTrainer (student, EMA teacher and domain discriminator, checkpointed
together; teacher and student evaluated). Evaluation uses detectron2's PascalVOCDetectionEvaluator /
COCOEvaluator, chosen from the dataset's metadata. Keys: detectron2's, plus LOSSMIX.* and DA.* (the
definitions and comments are in lossmix/config/defaults.py).
"""
import argparse
import os
import sys

INSTALL = """detectron2 is not installed: it is not on PyPI. Build it from source into this environment
(after torch), at the commit lossmix is tested against:
    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git@02b5c4e295e990042a714712c21dc79b731e8833'
See the README section 'Using lossmix from detectron2'."""


def _parser():
    try:
        from detectron2.engine import default_argument_parser
    except ImportError:  # help (and how to install detectron2) without it
        parser = argparse.ArgumentParser(description=__doc__, epilog=INSTALL,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
        parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
        parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
        parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
        parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
        return parser, False
    parser = default_argument_parser(epilog=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser, True


try:
    import lossmix  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trainers():
    """The two trainers (imported here: detectron2 is needed from this point on)."""
    import lossmix.d2 as lmd2
    from detectron2.engine import DefaultTrainer

    from lossmix.d2.adaptation import AdaptiveTeacherTrainer
    from lossmix.d2.datasets import build_evaluator

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
            return build_evaluator(cfg, dataset_name, output_folder)

    return Trainer, AdaptiveTeacherTrainer


def setup(args):
    import lossmix.d2 as lmd2
    from detectron2.config import get_cfg
    from detectron2.engine import default_setup

    from lossmix.d2.config import validate_lossmix_config

    cfg = get_cfg()
    lmd2.add_lossmix_config(cfg)
    lmd2.add_da_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    validate_lossmix_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.evaluation import verify_results
    from detectron2.utils import comm

    from lossmix.d2.adaptation import build_adaptive_teacher
    from lossmix.d2.datasets import register_lossmix_datasets

    cfg = setup(args)
    register_lossmix_datasets()
    Trainer, AdaptiveTeacherTrainer = _trainers()
    trainer_cls = AdaptiveTeacherTrainer if cfg.DA.ENABLED else Trainer
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        if cfg.DA.ENABLED:  # an adaptation checkpoint holds student, teacher and discriminator
            model = build_adaptive_teacher(cfg, model)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = trainer_cls.test(cfg, model)
        if comm.is_main_process() and not cfg.DA.ENABLED:
            verify_results(cfg, res)
        return res
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser, have_detectron2 = _parser()
    args = parser.parse_args()
    if not have_detectron2:
        sys.exit(INSTALL)
    from detectron2.engine import launch

    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))

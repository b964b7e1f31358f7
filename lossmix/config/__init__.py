from .defaults import CfgNode, get_cfg  # noqa: F401
from . import da  # noqa: F401,E402  (registers the DA.* validator)

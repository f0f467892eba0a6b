"""Models: a backbone registry (timm-like), classification heads, initial weights and model files.

>>> from medcli.models import create_model
>>> model = create_model("resnet50", num_classes=3, weights="imagenet", head="mlp", in_channels=1)

Backbone names are medcli's registered ones or timm names (``convnext_tiny.fb_in22k``, ``hf-hub:ORG/NAME``;
:mod:`medcli.models.timm_backbones`). See :mod:`medcli.models._registry` for the backbone entries, :mod:`medcli.models.heads` for heads,
:mod:`medcli.models.weights` for the ``weights`` argument and :mod:`medcli.models.checkpoint` for model files.
"""

from ._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneInfo,
    get_backbone,
    list_backbones,
    nhwc_to_nchw,
    register_backbone,
    register_timm_backbone,
    vit_tokens_to_grid,
)
from .checkpoint import MODEL_FORMAT, load_model, read_model_file, save_model
from .classifier import Classifier, create_model, find_input_conv
from .customcnn import CustomCNN
from .heads import HeadInfo, build_head, get_head, list_heads, register_head
from .weights import (
    cached_weights_path,
    download_weights,
    imagenet_state_dict,
    is_cached,
    load_trunk_weights,
    read_weights_file,
    resolve_weights,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_FORMAT",
    "BackboneInfo",
    "Classifier",
    "CustomCNN",
    "HeadInfo",
    "build_head",
    "cached_weights_path",
    "create_model",
    "download_weights",
    "find_input_conv",
    "get_backbone",
    "get_head",
    "imagenet_state_dict",
    "is_cached",
    "list_backbones",
    "list_heads",
    "load_model",
    "load_trunk_weights",
    "read_model_file",
    "read_weights_file",
    "nhwc_to_nchw",
    "register_backbone",
    "register_timm_backbone",
    "register_head",
    "resolve_weights",
    "save_model",
    "vit_tokens_to_grid",
]

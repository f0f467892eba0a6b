"""Initial weights for a model's trunk: none, ImageNet, or a file.

``weights`` is one of

* ``None`` / ``"none"``: random initialisation.
* ``"imagenet"`` (alias ``"pretrained"``): the pretrained weights registered for the backbone. torchvision
  backbones: the ImageNet weights, in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, see
  :func:`torch.hub.get_dir`). timm backbones: the weights of the name's pretrained tag (``fb_in22k``,
  ``lvd142m``, ...), in the Hugging Face cache (``$HF_HOME/hub``; see :mod:`medcli.models.timm_backbones`). A
  cached file is loaded without any network access; otherwise it is downloaded once. Compute nodes often have
  no internet: there the download fails with a message explaining how to pre-fetch the weights (``medcli
  weights download NAME`` on a machine with internet, same ``TORCH_HOME`` / ``HF_HOME``; then
  ``HF_HUB_OFFLINE=1`` on the compute nodes). medcli never falls back to random weights silently, because a
  "pretrained" experiment that secretly started from random weights produces plausible but wrong results.
* a path (the keywords above win over a file of the same name), loaded with ``weights_only=True`` (no
  arbitrary code runs) and holding one of

  - a state dict of the full torchvision model (``conv1.weight`` ... ``fc.weight``): the final layer's keys
    are skipped, since they do not fit the new number of classes;
  - a medcli model checkpoint (:func:`medcli.models.checkpoint.save_model`): its trunk is loaded, its head is
    ignored (the new model always starts with a fresh head);
  - a state dict of just the trunk.

For timm backbones a file may also be ``.safetensors``, and any plain state dict (a timm model's, with or
without its classifier, also inside a ``state_dict``/``model`` key) is loaded by timm itself
(``pretrained_cfg_overlay``), with its input-channel and position-embedding adaptation; a medcli model file
goes through :func:`load_trunk_weights`.

Loading is strict: every trunk tensor must be present with the right shape. Two adaptations are made on the
way in: 3-channel input filters are summed over RGB for a 1-channel model, and ViT position embeddings are
interpolated to the model's patch grid.
"""

from __future__ import annotations

import http.client
import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from ..errors import MedcliError
from ._registry import BackboneInfo, get_backbone

if TYPE_CHECKING:
    from .classifier import Classifier

log = logging.getLogger("medcli")

_CHECKPOINT_PREFIX = "medcli.model"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _keys(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


PRETRAINED_KEYWORDS = ("imagenet", "pretrained")


def resolve_weights(info: BackboneInfo | str, weights: str | os.PathLike | None) -> str | Path | None:
    """Normalise a ``weights`` argument to None, ``"imagenet"`` (also for ``"pretrained"``) or an existing file
    path. Raises :class:`MedcliError` for a backbone without pretrained weights or a missing file."""
    info = get_backbone(info) if isinstance(info, str) else info
    if weights is None or (isinstance(weights, str) and weights.strip().lower() == "none"):
        return None
    if isinstance(weights, str) and weights.strip().lower() in PRETRAINED_KEYWORDS:
        if info.imagenet_weights is None and info.family == "timm":
            raise MedcliError(
                f"{info.name} has no pretrained weights in timm: use a tag that has them "
                f"(`medcli models --search '{info.name.split('.')[0]}*'`), weights 'none' or a weights file"
            )
        if info.imagenet_weights is None:
            raise MedcliError(
                f"{info.name} has no ImageNet weights: use weights 'none' (train from scratch) "
                f"or the path of a weights file saved from a {info.name} model"
            )
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MedcliError(f"weights file {path} not found: use 'imagenet', 'none' or the path of a weights file")
    return path


def is_medcli_checkpoint(path: str | os.PathLike) -> bool:
    """True for a medcli model file (:func:`medcli.models.checkpoint.save_model`); reads only its header where
    the file allows memory mapping."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return False
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith(_CHECKPOINT_PREFIX)


def _imagenet_enum(name: str):
    info = get_backbone(name)
    if info.family == "timm":
        raise MedcliError(f"{name} is a timm backbone: its weights come from timm (Hugging Face cache), not torchvision")
    if info.imagenet_weights is None:
        raise MedcliError(f"{name} has no ImageNet weights: only torchvision backbones have them")
    import torchvision  # imported on use: ~1.5 s that runs without ImageNet weights never need

    return torchvision.models.get_weight(info.imagenet_weights)


def cached_weights_path(name: str) -> Path:
    """Where the pretrained weights of backbone ``name`` are (or will be) cached: a file for torchvision; for
    timm the cached file, or the Hub cache folder of its repository while it is not cached yet."""
    info = get_backbone(name)
    if info.family == "timm":
        from .timm_backbones import cached_path, repo_cache_dir

        if info.imagenet_weights is None:
            raise MedcliError(f"{name} has no pretrained weights in timm")
        return cached_path(info) or repo_cache_dir(info) or Path(torch.hub.get_dir()) / "checkpoints"
    url = _imagenet_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def is_cached(name: str) -> bool:
    """Whether backbone ``name``'s pretrained weights are in the local cache (no network access)."""
    info = get_backbone(name)
    if info.family == "timm":
        from .timm_backbones import cached_path

        return info.imagenet_weights is not None and cached_path(info) is not None
    return cached_weights_path(name).is_file()


def imagenet_state_dict(name: str, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """The ImageNet state dict (full torchvision model) of backbone ``name``: from the cache, else downloaded."""
    enum = _imagenet_enum(name)
    path = cached_weights_path(name)
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or corrupt cache file
            raise MedcliError(
                f"cached ImageNet weights {path} for {name} cannot be read ({_first_line(exc)}): "
                f"delete the file and run `medcli weights download {name}`"
            ) from None
    log.info("downloading ImageNet weights for %s (%s) to %s", name, enum, path.parent)
    try:
        # check_hash: the file name carries a SHA-256 prefix, so a damaged download is never cached.
        return enum.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise MedcliError(
            f"cannot write the ImageNet weights for {name} to {path.parent} ({_first_line(exc)}): "
            f"set TORCH_HOME to a writable folder"
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, socket and SSL errors
        reason = exc.reason if isinstance(exc, URLError) else _first_line(exc)
        raise MedcliError(
            f"the ImageNet weights for {name} could not be downloaded ({reason}); is there no internet on this "
            f"machine? Pre-fetch them with `medcli weights download {name}` on a machine with internet "
            f"(e.g. a login node) using the same TORCH_HOME (cache: {path.parent})"
        ) from None
    except RuntimeError as exc:  # hash mismatch or unreadable download
        raise MedcliError(
            f"the downloaded ImageNet weights for {name} are damaged ({_first_line(exc)}): "
            f"run `medcli weights download {name}` again"
        ) from None


def download_weights(names: list[str], *, progress: bool = True) -> list[Path]:
    """Pre-fetch the pretrained weights of backbones ``names``; returns the cached paths.

    torchvision names go to the torch hub cache (``$TORCH_HOME``), timm and ``hf-hub:`` names to the Hugging
    Face cache (``$HF_HOME``; gated models need ``HF_TOKEN``), fetched by building the model exactly as
    training will, so what is cached is what compute nodes load with ``HF_HUB_OFFLINE=1``. All names are
    checked before anything is downloaded, so a typo does not leave a half-done job.
    """
    unique = list(dict.fromkeys(names))
    if not unique:
        raise MedcliError("no backbone given: name at least one backbone whose pretrained weights to download")
    infos = {n: get_backbone(n) for n in unique}
    without = [n for n in unique if infos[n].imagenet_weights is None]
    if without:
        raise MedcliError(f"{', '.join(without)}: no pretrained weights exist for this backbone; nothing to download")
    paths = []
    for name in unique:
        if infos[name].family == "timm":
            from .timm_backbones import download

            paths.append(download(infos[name]))
            continue
        if is_cached(name):
            log.info("ImageNet weights for %s are already cached at %s", name, cached_weights_path(name))
        else:
            imagenet_state_dict(name, progress=progress)
        paths.append(cached_weights_path(name))
    return paths


def read_weights_file(path: str | os.PathLike, *, backbone: str | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file (see the module docstring) and return the state dict to load into a trunk.

    For a medcli checkpoint only the trunk tensors are returned (``trunk.`` prefix removed); a checkpoint of a
    different backbone than ``backbone`` is refused by name rather than by a list of mismatched keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MedcliError(f"weights file {path} not found: use 'imagenet', 'none' or the path of a weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise MedcliError(
                f"{path}: refused to load: the file holds pickled Python objects besides tensors; save a "
                f"state dict (model.state_dict()) or a medcli model checkpoint instead"
            ) from None
        raise MedcliError(f"{path} is not a PyTorch weights file ({_first_line(exc)})") from None
    except Exception as exc:
        raise MedcliError(f"{path} is not a PyTorch weights file ({_first_line(exc)})") from None

    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(_CHECKPOINT_PREFIX):
        if backbone is not None and obj.get("backbone") != backbone:
            raise MedcliError(
                f"{path} is a {obj.get('backbone')} model checkpoint; it cannot initialise {backbone}: "
                f"use a {backbone} weights file"
            )
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise MedcliError(f"{path}: the medcli model checkpoint has no state_dict; the file is damaged")
        return {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}

    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())):
        raise MedcliError(
            f"{path} is neither a state dict (parameter names -> tensors) nor a medcli model checkpoint; "
            f"for a training checkpoint, save its model state dict on its own"
        )
    state = dict(obj)
    # Whole-model dicts saved by hand: DistributedDataParallel's "module." prefix, or a Classifier's own keys.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if all(k.startswith(("trunk.", "head.")) for k in state):
        state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    return state


def load_trunk_weights(model: Classifier, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state_dict`` into ``model.trunk``, adapting input channels and ViT position embeddings.

    ``source`` names where the weights came from, for messages.
    """
    info = model.info
    state = dict(state_dict)
    if info.classifier:
        final = info.classifier
        state = {k: v for k, v in state.items() if not (k == final or k.startswith(final + "."))}
    expected = model.trunk.state_dict()

    key = f"{model.input_conv}.weight"
    given = state.get(key)
    if given is not None and given.ndim == 4 and given.shape[1] == 3 and expected[key].shape[1] == 1:
        # Summing (not averaging or picking one channel) keeps the pretrained response to a grey image:
        # a grey RGB image has three equal channels, so conv(rgb) == conv_summed(grey).
        state[key] = given.sum(dim=1, keepdim=True)
        log.info("%s: summed the RGB filters of %s for 1-channel input (%s)", info.name, model.input_conv, source)

    pos = "encoder.pos_embedding"
    if info.fixed_size and pos in state and pos in expected and state[pos].shape != expected[pos].shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        img_size, patch = model.config["img_size"], model.trunk.patch_size
        try:
            state = interpolate_embeddings(img_size, patch, state)
        except ValueError as exc:
            raise MedcliError(f"{source}: cannot adapt the position embeddings to img_size {img_size}: {exc}") from None
        log.info("%s: interpolated the position embeddings to a %dx%d patch grid (img_size %d)",
                 info.name, img_size // patch, img_size // patch, img_size)

    if info.family == "timm":
        from .timm_backbones import resize_pos_embed

        if resize_pos_embed(model.trunk, state):
            log.info("%s: resized the position embeddings to the %s patch grid (%s)",
                     info.name, tuple(model.trunk.patch_embed.grid_size), source)

    # Older torchvision weights predate BatchNorm's step counter; it carries no learned information.
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected {_keys(unexpected)}")
        if mismatched:
            problems.append(f"wrong shape (file vs model) {_keys(mismatched, 2)}")
        raise MedcliError(
            f"{source} does not fit the {info.name} trunk: {'; '.join(problems)}; "
            f"was it saved from another backbone or input size?"
        )
    model.trunk.load_state_dict(state, strict=True)

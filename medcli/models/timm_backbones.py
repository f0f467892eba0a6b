"""timm (PyTorch Image Models) and Hugging Face Hub backbones, offline-first.

Names (after medcli's own registry, which wins): ``arch.tag`` (``convnext_tiny.fb_in22k``), a bare ``arch``
(timm's default tag), ``hf-hub:ORG/NAME`` (a timm checkpoint published on the Hub: ``config.json`` +
weights) and ``local-dir:/path`` (the same files in a folder).

:func:`timm_backbone_info` derives a :class:`~medcli.models.BackboneInfo` (``family="timm"``) from timm itself,
building the architecture once on the ``meta`` device (no memory, no weights):

* data contract from ``model.pretrained_cfg``: ``input_size``, ``mean``/``std``, ``interpolation``, ``crop_pct``,
  ``fixed_input_size``;
* ``stages`` from ``model.group_matcher(coarse=True)`` (timm's own grouping for layer-wise learning rates; the
  ``(99999,)`` "belongs to the previous group" rule and, as in medcli's torchvision entries, the unmatched
  final norm/neck layers join the last group), else ``model.feature_info`` boundaries. The groups of
  parameter names are compressed to the largest modules wholly inside one group, so frozen stages are modules
  that can be put in eval mode (BatchNorm statistics), plus loose parameters such as ViT's ``cls_token``;
* Grad-CAM target: token models (ViT, DeiT, DINOv2, ... with ``num_prefix_tokens``) the last block's
  ``norm1`` (the class token after the last block ignores the patch tokens, so their gradient there is 0:
  Chefer et al. / the pytorch-grad-cam tutorial); otherwise the last ``feature_info`` module (ConvNeXt
  ``stages.3``, ResNet ``layer4``, RegNet ``s4``, Swin ``layers.3``). The layout of that output (NCHW, NHWC
  for Swin, tokens) is measured with a ``meta`` forward pass.

:func:`build_timm_trunk` builds the trunk: ``timm.create_model(..., in_chans=C)`` with the classifier reset to
``Identity`` (``reset_classifier(0)``), so ``trunk(x)`` is the pooled pre-logits vector ``(B, F)``, ``F`` =
``head_hidden_size`` (``num_features`` unless the head has a hidden layer). Pretrained weights always load
*strictly*: the model is built with the number of classes of the weights (so timm neither drops keys nor
loads non-strictly), then its classifier is reset. 1-channel models get timm's ``adapt_input_conv`` (RGB
filters summed, as medcli does for torchvision). Fixed-size models (ViT, Swin) get ``img_size=`` (position
embeddings resized by timm's checkpoint filter) or, if the architecture lacks it, ``dynamic_img_size=True``.

Weights come from the Hugging Face Hub cache (``$HF_HOME/hub``, or ``$TORCH_HOME`` for the few URL-only
tags). ``medcli weights download NAME`` fills it on a machine with internet; with ``HF_HUB_OFFLINE=1``
(read when huggingface_hub is imported: set it in the job's environment) compute nodes load from it. Missing
from the cache, gated, or not found: one-line :class:`MedcliError` saying what to do, never random weights.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MedcliError, one_line
from ._registry import BackboneInfo, nhwc_to_nchw

log = logging.getLogger("medcli")

#: The tested short list ``medcli models`` shows: (name, kind). Every entry resolves offline (tests).
CURATED: tuple[tuple[str, str], ...] = (
    ("resnet50.a1_in1k", "CNN"),
    ("convnext_tiny.fb_in22k", "CNN"),
    ("convnext_nano.in12k_ft_in1k", "CNN"),
    ("efficientnet_b0.ra_in1k", "CNN"),
    ("efficientnetv2_rw_s.ra2_in1k", "CNN"),
    ("regnety_016.tv2_in1k", "CNN"),
    ("densenet121.tv_in1k", "CNN"),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT"),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "ViT"),
    ("vit_base_patch16_224.mae", "ViT (MAE)"),
    ("vit_small_patch14_dinov2.lvd142m", "ViT (DINOv2)"),
    ("vit_small_patch14_reg4_dinov2.lvd142m", "ViT (DINOv2, registers)"),
    ("vit_base_patch16_clip_224.openai", "ViT (CLIP)"),
    ("deit_small_patch16_224.fb_in1k", "ViT (DeiT)"),
    ("swin_tiny_patch4_window7_224.ms_in1k", "Swin"),
)

_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_INFOS: dict[tuple, BackboneInfo] = {}


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise MedcliError("timm is not installed: pip install 'timm>=1.0,<2' to use timm backbones") from None
    return timm


# --- names ------------------------------------------------------------------------------------------------


def is_hub_name(name: str) -> bool:
    return name.startswith(_HUB_PREFIXES)


def close_matches(name: str, known: list[str], n: int = 5) -> list[str]:
    """The ``n`` names closest to ``name`` (difflib) among medcli's ``known`` names and timm's architectures and
    pretrained ``arch.tag`` names."""
    timm = _timm()
    pool = list(dict.fromkeys([*known, *timm.list_models(), *timm.list_models(pretrained=True)]))
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.6)


def _unknown(name: str, known: list[str]) -> MedcliError:
    matches = close_matches(name, known)
    hint = f"closest: {', '.join(matches)}; " if matches else ""
    pattern = re.sub(r"[^A-Za-z0-9]+.*$", "", name) or name
    return MedcliError(
        f"unknown backbone {name!r}: not a medcli backbone ({', '.join(known)}) nor a timm model; {hint}"
        f"`medcli models --search '*{pattern}*'` searches timm's models"
    )


def _check_name(name: str, known: list[str]) -> None:
    """Refuse names timm cannot resolve, with the closest matches (hf-hub/local-dir names pass through)."""
    timm = _timm()
    if is_hub_name(name) or name.startswith("local-dir:"):
        return
    if "/" in name:
        raise MedcliError(
            f"backbone {name!r}: a Hugging Face Hub model is named hf-hub:{name} (timm checkpoints only)"
        )
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise _unknown(name, known)
    if tag:
        tags = sorted(timm.models.get_arch_pretrained_cfgs(arch))
        if name not in tags:
            choices = ", ".join(tags) or "none (train from scratch with the bare name)"
            raise MedcliError(f"backbone {name!r}: {arch} has no pretrained tag {tag!r}; its tags: {choices}")


# --- Hub errors -------------------------------------------------------------------------------------------


def _hub_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - huggingface_hub < 0.24
        from huggingface_hub import utils as errors
    return errors


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_error(exc: BaseException, name: str, repo: str | None, *, what: str = "pretrained weights") -> MedcliError | None:
    """One-line :class:`MedcliError` for a failed Hub (or URL) download of ``name``'s ``what``; None when ``exc``
    is not a download problem."""
    errors = _hub_errors()
    where = f" ({repo})" if repo else ""
    download = f"`medcli weights download {name}`"
    gated = getattr(errors, "GatedRepoError", ())
    if gated and isinstance(exc, gated):
        repo_id = (repo or "").removeprefix("hf-hub:").split("@")[0]
        return MedcliError(
            f"{name}: the {what} on the Hugging Face Hub{where} are gated (licence-restricted): request access at "
            f"https://huggingface.co/{repo_id}, then set HF_TOKEN (or run `hf auth login`) on the machine that "
            f"runs {download}"
        )
    not_found = getattr(errors, "RepositoryNotFoundError", ())
    if not_found and isinstance(exc, not_found):
        return MedcliError(
            f"{name}: repository{where} not found on the Hugging Face Hub (private repositories need HF_TOKEN); "
            f"check the name with `medcli models --search`"
        )
    remote_missing = getattr(errors, "RemoteEntryNotFoundError", ()) or getattr(errors, "EntryNotFoundError", ())
    local_missing = getattr(errors, "LocalEntryNotFoundError", ())
    if remote_missing and isinstance(exc, remote_missing) and not (local_missing and isinstance(exc, local_missing)):
        return MedcliError(f"{name}: the {what} file is missing from the Hub repository{where} ({one_line(exc, 120)})")
    if isinstance(exc, OSError) and not (local_missing and isinstance(exc, local_missing)) and _local_fault(exc):
        return MedcliError(f"{name}: the {what} could not be read or written locally ({one_line(exc, 160)}): check the disk "
                           f"and permissions of the {'torch hub' if (repo or '').startswith('http') else 'Hugging Face'} cache")
    if type(exc).__name__ == "SafetensorError":
        return MedcliError(f"{name}: the cached {what} file is corrupt ({one_line(exc, 120)}): delete it and run {download} again")
    if isinstance(exc, OSError) or (local_missing and isinstance(exc, local_missing)):
        if (repo or "").startswith(("http://", "https://")):  # a URL-only tag: timm uses the torch hub cache
            cache, env = f"torch hub cache {torch.hub.get_dir()}", "TORCH_HOME"
        else:
            cache, env = f"Hugging Face cache {_hf_cache_dir()}", "HF_HOME"
        reason = "HF_HUB_OFFLINE is set" if _offline() else f"download failed: {one_line(exc, 120)}"
        return MedcliError(
            f"the {what} of {name}{where} are not in the {cache} and cannot be downloaded here ({reason}): "
            f"run {download} on a machine with internet (e.g. a login node) with the same {env}, then use "
            f"them offline (HF_HUB_OFFLINE=1)"
        )
    return None


def _local_fault(exc: OSError) -> bool:
    """A local file-system problem (disk full, permission denied, read-only), not a missing download."""
    import errno

    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT)


# --- structure ----------------------------------------------------------------------------------------------


def _matcher_names(matcher: Any) -> list[re.Pattern]:
    """The regexes of a timm ``group_matcher`` dict (``{"stem": re, "blocks": re | [(re, suffix), ...]}``)."""
    compiled = []
    for spec in matcher.values():
        if spec is None:
            continue
        for one in spec if isinstance(spec, (list, tuple)) else [spec]:
            compiled.append(re.compile(one[0] if isinstance(one, (list, tuple)) else one))
    return compiled


def _named_state(model: nn.Module) -> list[str]:
    """Parameter and buffer names in module order (buffers decide where a parameter-less norm belongs)."""
    names = [n for n, _ in model.named_parameters()]
    names += [n for n, _ in model.named_buffers() if n not in names]
    return names


def _groups_from_matcher(model: nn.Module) -> list[list[str]] | None:
    """Parameter/buffer names grouped by ``group_matcher(coarse=True)``, input to output; None without one."""
    from timm.models._manipulate import group_with_matcher

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError, TypeError):
        return None
    names = _named_state(model)
    grouped = group_with_matcher(((n, None) for n in names), matcher)
    groups = [grouped[k] for k in sorted(grouped)]
    if isinstance(matcher, dict) and len(groups) > 1:
        # timm maps names no regex matches (final norm, neck, pre-logits) to a last group of their own; they
        # belong with the last stage, as the final LayerNorm does in medcli's torchvision ConvNeXt entry.
        patterns = _matcher_names(matcher)
        if not any(p.match(n) for n in groups[-1] for p in patterns):
            last = groups.pop()
            groups[-1] = groups[-1] + last
    return groups


def _groups_from_feature_info(model: nn.Module) -> list[list[str]]:
    """Names split after each ``feature_info`` module (the rest joins the last stage)."""
    modules = [f["module"] for f in getattr(model, "feature_info", [])]
    names = _named_state(model)
    if not modules:
        return [names]
    groups: list[list[str]] = [[] for _ in modules]
    index = 0
    # A name belongs to the first feature module at or after it in module order.
    last_of = {}
    for i, name in enumerate(names):
        for j, m in enumerate(modules):
            if name.startswith(m + "."):
                last_of[j] = i
    bounds = [last_of.get(j, -1) for j in range(len(modules))]
    for i, name in enumerate(names):
        while index < len(modules) - 1 and i > bounds[index]:
            index += 1
        groups[index].append(name)
    return [g for g in groups if g]


def _compress(model: nn.Module, groups: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    """Each group of parameter/buffer names as the largest modules wholly inside it, plus loose parameters.

    Every parameter ends up in exactly one group (buffer-only entries are dropped when their module is
    mixed; they carry no gradient). Groups stay in input-to-output order; names within a group in module order.
    """
    group_of = {n: i for i, names in enumerate(groups) for n in names}
    out: list[list[str]] = [[] for _ in groups]

    def visit(prefix: str, module: nn.Module) -> None:
        owned = {group_of[prefix + n] for n in _named_state(module) if prefix + n in group_of}
        if len(owned) == 1 and prefix:
            out[owned.pop()].append(prefix[:-1])
            return
        for pname, _ in module.named_parameters(recurse=False):
            out[group_of[prefix + pname]].append(prefix + pname)
        for cname, child in module.named_children():
            visit(f"{prefix}{cname}.", child)

    visit("", model)
    return tuple(tuple(g) for g in out if g)


def timm_stages(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """``model``'s stages (dotted module/parameter names, input to output) from timm's ``group_matcher(coarse=True)``,
    else its ``feature_info``; together they hold every parameter exactly once."""
    groups = _groups_from_matcher(model) or _groups_from_feature_info(model)
    return _compress(model, groups)


def _cam_target(model: nn.Module) -> str:
    blocks = getattr(model, "blocks", None)
    if isinstance(getattr(model, "num_prefix_tokens", None), int) and isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        last = f"blocks.{len(blocks) - 1}"
        return f"{last}.norm1" if hasattr(blocks[-1], "norm1") else last
    info = getattr(model, "feature_info", None) or []
    if info:
        return info[-1]["module"]
    raise MedcliError(f"{type(model).__name__}: timm gives no feature_info to choose a Grad-CAM layer from")


def _cam_layout(model: nn.Module, layer: str, input_size: tuple[int, int, int]) -> str:
    """``"tokens"``, ``"nhwc"`` or ``"nchw"``: measured with a meta-device forward, else from attributes."""
    seen: list[torch.Size] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_size, device="meta"))
    except Exception:
        seen.clear()
    finally:
        handle.remove()
    if seen:
        shape = seen[0]
        if len(shape) == 3:
            return "tokens"
        if len(shape) == 4:
            info = getattr(model, "feature_info", None) or [{}]
            chans = info[-1].get("num_chs")
            return "nhwc" if shape[-1] == chans and shape[1] != chans else "nchw"
    if isinstance(getattr(model, "num_prefix_tokens", None), int):
        return "tokens"
    return "nhwc" if str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC" else "nchw"


def _meta_model(timm_name: str, kwargs: dict) -> nn.Module:
    timm = _timm()
    try:
        with torch.device("meta"):
            return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, NotImplementedError, ValueError, TypeError, AssertionError):
        # Some constructors compute on tensors (.item() on a meta tensor fails): build on the CPU instead.
        return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)


def _weights_source(name: str, cfg: dict) -> str | None:
    if is_hub_name(name) or name.startswith("local-dir:"):
        return name
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    return cfg.get("url") or cfg.get("file") or None


def timm_backbone_info(
    name: str, *, known: list[str] | None = None, medcli_name: str | None = None, model_kwargs: dict | None = None
) -> BackboneInfo:
    """The :class:`BackboneInfo` (``family="timm"``) of timm model ``name``; cached per name and arguments.

    Args:
        name: ``arch``, ``arch.tag``, ``hf-hub:ORG/NAME`` or ``local-dir:/path``.
        known: medcli's registered names, for the "closest matches" of an unknown name.
        medcli_name: the entry's name, default ``name``.
        model_kwargs: fixed ``timm.create_model`` arguments (``register_timm_backbone``).

    Raises :class:`MedcliError` for unknown names or tags and for ``hf-hub:`` configs that are not cached and
    cannot be downloaded.
    """
    kwargs = dict(model_kwargs or {})
    key = (name, medcli_name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key in _INFOS:
        return _INFOS[key]
    _check_name(name, list(known or []))
    try:
        model = _meta_model(name, kwargs)
    except RuntimeError as exc:
        if "Invalid pretrained tag" in str(exc) or "Unknown model" in str(exc):
            raise _unknown(name, list(known or [])) from None
        raise
    except Exception as exc:
        err = hub_error(exc, name, name if is_hub_name(name) else None, what="model config")
        if err is None:
            raise
        raise err from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    channels, height, width = tuple(cfg.get("input_size") or (3, 224, 224))
    mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic"
    layer = _cam_target(model)
    classifier = cfg.get("classifier")
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0] if classifier else None
    info = BackboneInfo(
        name=medcli_name or name,
        family="timm",
        input_size=int(max(height, width)),
        mean=mean[:3],
        std=std[:3],
        interpolation=interpolation,
        imagenet_weights=_weights_source(name, cfg),
        stages=timm_stages(model),
        cam_layer=layer,
        classifier=classifier,
        fixed_size=bool(cfg.get("fixed_input_size", False)),
        timm_name=name,
        timm_kwargs=tuple(sorted(kwargs.items())),
        cam_layout=_cam_layout(model, layer, (3, height, width)),
        crop_pct=float(cfg["crop_pct"]) if cfg.get("crop_pct") else None,
        pretrained_tag=cfg.get("tag") or None,
        license=cfg.get("license") or None,
    )
    _INFOS[key] = info
    return info


# --- Grad-CAM reshape ---------------------------------------------------------------------------------------


class TokenGrid:
    """Grad-CAM reshape for timm token models: ``(B, prefix + h*w, C)`` -> ``(B, C, h, w)``.

    Drops the trunk's ``num_prefix_tokens`` (class and register tokens) and lays the patch tokens out on the
    patch grid of the last input the trunk saw (:meth:`record_input`, a forward pre-hook), so dynamic image
    sizes and non-square inputs work. Without a recorded input: the trunk's built grid, else a square grid.
    """

    def __init__(self, trunk: nn.Module) -> None:
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        self.patch_embed = getattr(trunk, "patch_embed", None)
        self.input_hw: tuple[int, int] | None = None

    def record_input(self, module: nn.Module, args: tuple) -> None:
        if args and torch.is_tensor(args[0]) and args[0].ndim == 4:
            self.input_hw = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    def grid(self, n: int) -> tuple[int, int]:
        pe = self.patch_embed
        candidates = []
        if self.input_hw is not None and pe is not None:
            if hasattr(pe, "dynamic_feat_size"):
                candidates.append(tuple(pe.dynamic_feat_size(self.input_hw)))
            patch = getattr(pe, "patch_size", None)
            if patch is not None:
                candidates.append((self.input_hw[0] // patch[0], self.input_hw[1] // patch[1]))
        if pe is not None and getattr(pe, "grid_size", None) is not None:
            candidates.append(tuple(pe.grid_size))
        side = math.isqrt(n)
        candidates.append((side, side))
        for h, w in candidates:
            if h * w == n:
                return int(h), int(w)
        raise ValueError(f"{n} patch tokens do not fit the patch grid of a {self.input_hw} input")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :, :]
        h, w = self.grid(patches.shape[1])
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)


def cam_reshape(layout: str) -> Any:
    return nhwc_to_nchw if layout == "nhwc" else None


# --- building ----------------------------------------------------------------------------------------------


def _create(info: BackboneInfo, img_size: int, **kwargs) -> nn.Module:
    """``timm.create_model`` with the input size handled: fixed-size models get ``img_size`` (or, if the
    architecture has no such argument, ``dynamic_img_size=True``)."""
    timm = _timm()
    args = {**dict(info.timm_kwargs), **kwargs}
    if not info.fixed_size:
        return timm.create_model(info.timm_name, **args)
    try:
        return timm.create_model(info.timm_name, img_size=img_size, **args)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    if img_size == info.input_size:
        return timm.create_model(info.timm_name, **args)
    try:
        return timm.create_model(info.timm_name, dynamic_img_size=True, **args)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
    raise MedcliError(f"{info.name} only takes {info.input_size} px input: use --img-size {info.input_size}")


def read_timm_weights_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A backbone weights file for a timm model (``.safetensors``, ``.pth``/``.bin``, also wrapped in a
    ``state_dict``/``model``/EMA key, ``module.`` prefixes removed: timm's ``load_state_dict``)."""
    timm = _timm()
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:
        raise MedcliError(f"{path} is not a weights file for {name} ({one_line(exc, 160)})") from None
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise MedcliError(f"{path} holds no state dict (parameter names -> tensors) for {name}")
    if all(k.startswith(("trunk.", "head.")) for k in state):  # a medcli Classifier's state dict saved by hand
        state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    return state


@contextlib.contextmanager
def _partial_loads():
    """Collect timm's log lines that say pretrained weights were loaded only partly (a first layer it could not
    adapt and initialised randomly; keys missing or unexpected under a non-strict load timm chose itself)."""
    found: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith(("Unable to convert", "Missing keys", "Unexpected keys")):
                found.append(message)

    handler = _Catch(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("timm.models._builder", "timm.models._manipulate", "timm.models._helpers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield found
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _build_error(info: BackboneInfo, img_size: int, what: str, text: str) -> str:
    """Say "img_size" only when timm's message is about the input size or the patch grid."""
    if re.search(r"img_size|input size|image size|grid|patch|divisible|window", text, re.IGNORECASE):
        return f"{info.name} cannot be built for img_size {img_size}: {one_line(text, 200)}; try the model's own size ({info.input_size})"
    return f"{info.name}: {what} cannot be used ({one_line(text, 200)})"


def build_timm_trunk(
    info: BackboneInfo, in_channels: int, img_size: int, *, pretrained: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None, source: str | None = None,
) -> tuple[nn.Module, int]:
    """The timm trunk of ``info`` (classifier ``Identity``) and its pooled feature size ``F``.

    Args:
        in_channels: 1 or 3 (``in_chans``; pretrained RGB filters summed for 1).
        img_size: input size in pixels; fixed-size models are built for it.
        pretrained: load ``info``'s pretrained tag from the Hub cache (downloaded if allowed).
        state_dict: load these backbone weights instead (a file's contents), through the same timm path.
        source: names the weights in messages.

    Loading is strict (see the module docstring). Raises :class:`MedcliError` when the weights are not
    cached and cannot be downloaded, are gated, or do not fit.
    """
    kwargs: dict[str, Any] = {"in_chans": int(in_channels)}
    what = source or f"the pretrained weights of {info.name}"
    if state_dict is not None:
        n_src = 0
        if info.classifier and f"{info.classifier}.weight" in state_dict:
            n_src = int(state_dict[f"{info.classifier}.weight"].shape[0])
        overlay = {"state_dict": state_dict, "num_classes": n_src, "source": ""}
        kwargs.update(pretrained=True, num_classes=n_src, pretrained_cfg_overlay=overlay)
    elif pretrained:
        kwargs.update(pretrained=True)  # num_classes = the weights' own: a strict load
        local = cached_path(info)
        if local is not None and local.is_file():
            # load the cached file itself: huggingface_hub would otherwise ask the Hub for the file's metadata first
            # (about 46 s of retries on a compute node without network unless HF_HUB_OFFLINE=1 is set)
            kwargs.update(pretrained_cfg_overlay={"file": str(local), "source": ""})
    else:
        kwargs.update(pretrained=False, num_classes=0)
    try:
        with _partial_loads() as partial:
            trunk = _create(info, img_size, **kwargs)
        if partial and kwargs.get("pretrained"):
            raise MedcliError(f"{what} loaded only partly into {info.name} ({one_line(partial[0], 200)}); medcli does not "
                              "train from partly random weights: use weights 'none' or weights that fit")
    except MedcliError:
        raise
    except RuntimeError as exc:
        text = str(exc)
        if "Error(s) in loading state_dict" in text or "size mismatch" in text or "Missing key" in text:
            raise MedcliError(
                f"{what} does not fit the {info.name} model ({one_line(text, 240)}); was it saved from another "
                f"architecture?"
            ) from None
        if "No pretrained weights exist" in text:
            raise MedcliError(f"{info.name} has no pretrained weights in timm: use weights 'none' or a weights file") from None
        err = hub_error(exc, info.name, info.imagenet_weights)
        if err is None:
            raise MedcliError(_build_error(info, img_size, what, text)) from None
        raise err from None
    except (AssertionError, ValueError) as exc:
        raise MedcliError(_build_error(info, img_size, what, str(exc))) from None
    except Exception as exc:
        err = hub_error(exc, info.name, info.imagenet_weights)
        if err is None:
            raise
        raise err from None
    if getattr(trunk, "num_classes", 0):
        trunk.reset_classifier(0)
    for cfg_name in ("pretrained_cfg", "default_cfg"):  # do not keep a second reference to the weights
        cfg = getattr(trunk, cfg_name, None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    feature_dim = int(getattr(trunk, "head_hidden_size", None) or trunk.num_features)
    return trunk, feature_dim


def resize_pos_embed(trunk: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Resize a checkpoint's ``pos_embed`` to ``trunk``'s patch grid in place (timm ``resample_abs_pos_embed``);
    True if it was resized."""
    key = "pos_embed"
    expected = trunk.state_dict().get(key)
    given = state.get(key)
    if expected is None or given is None or given.shape == expected.shape:
        return False
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(trunk, "no_embed_class", False) else int(getattr(trunk, "num_prefix_tokens", 1))
    state[key] = resample_abs_pos_embed(given, new_size=list(trunk.patch_embed.grid_size), num_prefix_tokens=prefix)
    return True


# --- weights cache -----------------------------------------------------------------------------------------


def _hub_repo(info: BackboneInfo) -> tuple[str, str | None] | None:
    src = info.imagenet_weights or ""
    if not src.startswith(_HUB_PREFIXES):
        return None
    repo = src.split(":", 1)[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return repo, revision


def cached_path(info: BackboneInfo) -> Path | None:
    """The cached weights file of ``info``'s pretrained tag, or None when it is not cached (no network used)."""
    repo = _hub_repo(info)
    if repo is None:
        url = info.imagenet_weights or ""
        if url.startswith("local-dir:"):
            folder = Path(url.split(":", 1)[1]).expanduser()
            return folder if folder.is_dir() else None
        if url.startswith(("http://", "https://")):
            from urllib.parse import urlparse

            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
            return path if path.is_file() else None
        return None
    from huggingface_hub import try_to_load_from_cache

    names = []
    if info.timm_name and not is_hub_name(info.timm_name):
        cfg = _timm().models.get_pretrained_cfg(info.timm_name)
        names.append(getattr(cfg, "hf_hub_filename", None))
    names += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
    for filename in [n for n in names if n]:
        found = try_to_load_from_cache(repo[0], filename, revision=repo[1])
        if isinstance(found, str):
            return Path(found)
    return None


def repo_cache_dir(info: BackboneInfo) -> Path | None:
    """Where the Hugging Face cache keeps ``info``'s repository (``$HF_HUB_CACHE/models--ORG--NAME``)."""
    repo = _hub_repo(info)
    if repo is None:
        return None
    return Path(_hf_cache_dir()) / ("models--" + repo[0].replace("/", "--"))


def download(info: BackboneInfo) -> Path:
    """Fetch ``info``'s pretrained weights into the cache (exactly what training loads: a full strict build) and
    return the cached file."""
    if info.imagenet_weights is None:
        raise MedcliError(f"{info.name}: timm has no pretrained weights for it; nothing to download")
    found = cached_path(info)
    if found is not None:
        log.info("pretrained weights for %s are already cached at %s", info.name, found)
        return found
    log.info("downloading the pretrained weights of %s (%s)", info.name, info.imagenet_weights)
    build_timm_trunk(info, 3, info.input_size, pretrained=True)
    found = cached_path(info)
    return found if found is not None else (repo_cache_dir(info) or Path(torch.hub.get_dir()) / "checkpoints")


# --- search -------------------------------------------------------------------------------------------------


def search(pattern: str) -> list[tuple[str, bool]]:
    """timm names matching ``pattern`` (fnmatch, case-insensitive; a pattern without wildcards matches as a
    substring): every pretrained ``arch.tag`` (True), then every architecture without pretrained weights (False)."""
    timm = _timm()
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    pattern = pattern.lower()
    tagged = timm.list_pretrained(pattern)
    with_weights = {n.split(".", 1)[0] for n in timm.list_models(pretrained=True)}
    bare = [a for a in timm.list_models(pattern) if a not in with_weights]
    return [(n, True) for n in tagged] + [(a, False) for a in bare]

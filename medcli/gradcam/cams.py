"""Class activation maps of medcli classifiers, computed with ``pytorch_grad_cam``.

:func:`compute_cams` runs one CAM method over a batch of normalised inputs, in chunks, using the backbone's
registered target layer (``Classifier.cam_target_layer()``) and, for ViT, its token-to-grid reshape. The model
is left exactly as it was found: training/eval mode of every module, ``requires_grad`` flags and existing
``.grad`` tensors are restored, and the method's hooks are removed when it finishes (or fails).

Gradients reach the target layer through the *input*, not the weights: during the computation every parameter
is frozen and each input chunk requires a gradient instead. This works the same for trainable and frozen
(``linear`` strategy) models, computes no weight gradients at all, and keeps memory flat over any number of
chunks (only one chunk's graph is alive at a time).

Empty maps. A method can produce a map with no information: gradcam++ and scorecam on a barely trained model
often give an all-zero map (every channel weight negative, cut by the method's ReLU), and any constant map is
just as empty. pytorch_grad_cam's per-image min-max scaling turns both into all-zero maps that still look like
a CAM to the faithfulness test (its "top 20 %" is then the first rows of the image). :func:`compute_cam_maps`
records each map's range *before* that scaling and flags a map as empty when its maximum and minimum are
equal within :data:`EMPTY_RTOL` (relative to the larger magnitude) plus :data:`EMPTY_ATOL`.
"""

from __future__ import annotations

import contextlib
import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..errors import MedcliError
from ..registry import Registry


@dataclass(frozen=True)
class CamMethod:
    """A CAM method: its ``pytorch_grad_cam`` class and how to call it.

    Attributes:
        name: the name users pass (``--method``).
        cam_class: a ``pytorch_grad_cam.base_cam.BaseCAM`` subclass.
        per_image: the method runs many forward passes per image (one per masked or ablated channel); it is
            given one image at a time, and ``batch_size`` becomes the size of its inner batches.
    """

    name: str
    cam_class: type
    per_image: bool = False


#: A map is empty when ``max - min <= EMPTY_ATOL + EMPTY_RTOL * max(|max|, |min|)`` before normalisation
#: (``numpy.isclose(max, min)`` with these tolerances). The relative part absorbs float32 rounding on a constant
#: map; the absolute part is far below pytorch_grad_cam's own 1e-7 normalisation epsilon.
EMPTY_RTOL = 1e-5
EMPTY_ATOL = 1e-8


@dataclass(frozen=True)
class CamMaps:
    """What :func:`compute_cam_maps` returns.

    Attributes:
        cams: ``(N, H, W)`` float32, each map min-max scaled to [0, 1] on its own (all zero for an empty map).
        raw_min, raw_max: ``(N,)`` float64, each map's minimum and maximum before that scaling (after the
            method's own ReLU), in the method's units.
        empty: ``(N,)`` bool, the map is constant within the tolerances (see :data:`EMPTY_RTOL`).
    """

    cams: np.ndarray
    raw_min: np.ndarray
    raw_max: np.ndarray
    empty: np.ndarray

    @property
    def n_empty(self) -> int:
        return int(self.empty.sum())


def empty_maps(raw_min: np.ndarray, raw_max: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which maps are constant, from their ranges before normalisation (see :data:`EMPTY_RTOL`)."""
    raw_min, raw_max = np.asarray(raw_min, np.float64), np.asarray(raw_max, np.float64)
    scale = np.maximum(np.abs(raw_min), np.abs(raw_max))
    return (raw_max - raw_min) <= EMPTY_ATOL + EMPTY_RTOL * scale


_METHODS: Registry[CamMethod] = Registry("CAM method", sort=False)  # listed in registration order


def register_method(method: CamMethod, *, overwrite: bool = False) -> CamMethod:
    """Add a CAM method to the registry (``overwrite=True`` replaces an entry of the same name)."""
    return _METHODS.add(method.name, method, overwrite=overwrite)


def list_methods() -> list[str]:
    return _METHODS.names()


def get_method(name: str) -> CamMethod:
    return _METHODS.get(name)


def _register_defaults() -> None:
    for name, cls, per_image in (
        ("gradcam", pgc.GradCAM, False),
        ("gradcam++", pgc.GradCAMPlusPlus, False),
        ("hirescam", pgc.HiResCAM, False),
        ("xgradcam", pgc.XGradCAM, False),
        ("layercam", pgc.LayerCAM, False),
        ("eigencam", pgc.EigenCAM, False),
        ("scorecam", pgc.ScoreCAM, True),
    ):
        register_method(CamMethod(name, cls, per_image))


_register_defaults()


@contextmanager
def preserved_state(model: nn.Module, *, freeze: bool) -> Iterator[None]:
    """Put ``model`` in eval mode (and, with ``freeze``, every parameter to ``requires_grad=False``) for a block.

    On exit, however the block ends, each module's training flag and each parameter's ``requires_grad`` and
    ``.grad`` are restored: a strategy's mix of frozen and trainable parts survives an explanation unchanged.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    try:
        model.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for p, (flag, grad) in zip(params, saved):
            p.requires_grad_(flag)
            p.grad = grad
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def compute_cams(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: Sequence[int],
    *,
    method: str = "gradcam",
    batch_size: int = 16,
    target_layer: nn.Module | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """CAMs of ``inputs`` for the given classes: ``(N, H, W)`` float32, min-max scaled to [0, 1] per image.

    The maps of :func:`compute_cam_maps` (same arguments), without the empty-map flags.
    """
    return compute_cam_maps(model, inputs, classes, method=method, batch_size=batch_size, target_layer=target_layer,
                            reshape_transform=reshape_transform).cams


def compute_cam_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: Sequence[int],
    *,
    method: str = "gradcam",
    batch_size: int = 16,
    target_layer: nn.Module | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> CamMaps:
    """CAMs of ``inputs`` for the given classes, with each map's range before normalisation and its empty flag.

    Args:
        model: a classifier returning logits; a medcli ``Classifier`` supplies its own target layer and
            reshape transform.
        inputs: normalised model input ``(N, C, H, W)``, on any device (chunks are moved to the model's).
        classes: for each image, the class index whose logit is explained.
        method: a registered method name (see :func:`list_methods`).
        batch_size: images per chunk (inner batch size for per-image methods such as ``scorecam``).
        target_layer, reshape_transform: override the model's registered target layer; ``reshape_transform``
            defaults to the model's only when the target layer does too.

    The maps have the input's spatial size (pytorch_grad_cam upsamples them) and each is scaled to [0, 1] on
    its own, so values are comparable within an image, not across images. A map that is constant before that
    scaling (:func:`empty_maps`) comes out all zero and is flagged in ``CamMaps.empty``.

    Raises ValueError for inputs that are not ``(N, C, H, W)`` or a class list of another length,
    :class:`MedcliError` for an unknown method or ``batch_size`` below 1, RuntimeError when the method fails.
    """
    cam_method = get_method(method)
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    if len(classes) != len(inputs):
        raise ValueError(f"{len(classes)} target classes for {len(inputs)} images")
    if batch_size < 1:
        raise MedcliError(f"--batch-size {batch_size}: use at least 1")
    if target_layer is None:
        target_layer = model.cam_target_layer()
        reshape_transform = reshape_transform or getattr(model, "cam_reshape_transform", None)

    n, _, height, width = inputs.shape
    cams = np.zeros((n, height, width), dtype=np.float32)
    raw_min, raw_max = np.full(n, np.nan), np.full(n, np.nan)
    step = 1 if cam_method.per_image else batch_size
    device = model_device(model)
    # Gradient-free methods draw a progress bar per image; keep it off the terminal.
    quiet = contextlib.redirect_stderr(io.StringIO()) if cam_method.per_image else contextlib.nullcontext()
    with preserved_state(model, freeze=True), torch.enable_grad(), quiet:
        with cam_method.cam_class(model=model, target_layers=[target_layer], reshape_transform=reshape_transform) as cam:
            if cam_method.per_image:
                cam.batch_size = batch_size  # read by ScoreCAM for its masked forward passes
            ranges: list[tuple[np.ndarray, np.ndarray]] = []
            _record_raw_ranges(cam, ranges)
            try:
                for start in range(0, n, step):
                    # A private copy that requires grad: the caller's tensor is left alone, and inputs made under
                    # torch.inference_mode become ordinary tensors autograd can use.
                    x = inputs[start : start + step].detach().to(device, dtype=torch.float32).clone().requires_grad_(True)
                    targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + step]]
                    ranges.clear()
                    cams[start : start + len(x)] = cam(input_tensor=x, targets=targets)
                    if len(ranges) == 1 and len(ranges[0][0]) == len(x):  # one target layer: one raw map per image
                        raw_min[start : start + len(x)], raw_max[start : start + len(x)] = ranges[0]
                    del x, targets
                    cam.outputs = None  # drop this chunk's graph before the next chunk builds its own
            except IndexError as exc:
                # BaseCAM.__exit__ swallows IndexError (after printing it); re-raise as an error that surfaces.
                raise RuntimeError(f"{method} failed: {exc}") from exc
    unrecorded = np.isnan(raw_min)  # a method that bypasses get_cam_image: judge its scaled map instead
    if unrecorded.any():
        flat = cams[unrecorded].reshape(int(unrecorded.sum()), -1)
        raw_min[unrecorded], raw_max[unrecorded] = flat.min(axis=1), flat.max(axis=1)
    return CamMaps(cams=cams, raw_min=raw_min, raw_max=raw_max, empty=empty_maps(raw_min, raw_max))


def _record_raw_ranges(cam, ranges: list) -> None:
    """Make ``cam`` append each raw map's ``(min, max)`` per image (after the ReLU pytorch_grad_cam applies next)
    to ``ranges``: ``BaseCAM.compute_cam_per_layer`` calls ``get_cam_image`` and then scales its output."""
    original = cam.get_cam_image

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        raw = np.maximum(np.asarray(out, dtype=np.float64), 0).reshape(len(out), -1)
        ranges.append((raw.min(axis=1), raw.max(axis=1)))
        return out

    cam.get_cam_image = recording

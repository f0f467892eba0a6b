"""The gradcam stage: class activation maps of a trained run, as overlays, per-class galleries and a
faithfulness score.

>>> from medcli.gradcam import explain_run
>>> result = explain_run("results/chest-ct/runs/resnet50__full/seed-0/fold-0", split="test", method="gradcam")

Images. For each true class, up to ``n`` images of ``predictions/<split>.csv`` are chosen, half correctly and
half wrongly classified where possible (:func:`select_samples`; seeded, independent of row order). They are
decoded with the run's recorded preprocessing (size, channels, resize mode, interpolation) and normalised with
its mean/std, without augmentation: the very input the model was scored on.

CAMs. Methods come from ``pytorch_grad_cam`` (:func:`list_methods`: gradcam, gradcam++, hirescam, xgradcam,
layercam, eigencam, scorecam). The target layer is the backbone's registered ``cam_layer``; ViT token maps are
laid out on their patch grid first. The explained class is the predicted one (``target="pred"``) or the true
one (``target="true"``). Each map is upsampled to the input size and min-max normalised per image: colours
compare regions within an image, never intensities across images. See :mod:`medcli.gradcam.cams` for how
frozen models are handled.

Faithfulness (:mod:`medcli.gradcam.faithfulness`). For each image ``x`` and its explained class ``c``, let
``M`` be the 20 % of pixels with the highest CAM values (exactly ``round(0.2 * H * W)`` pixels, ties broken in
row-major order) and ``p`` the softmax probability of ``c``. Outside the kept region, pixels are set to 0 in
normalised space, i.e. to the preprocessing mean intensity:

* ``drop_keep_top20 = p(x) - p(x * M)``: confidence lost when only the top region is kept (small is good);
* ``drop_remove_top20 = p(x) - p(x * (1 - M))``: confidence lost when the top region is removed (large is good);
* ``score = drop_remove_top20 - drop_keep_top20 = p(x * M) - p(x * (1 - M))``, in [-1, 1]: higher = more
  faithful; about 0 when the highlighted region matters no more than the rest of the image.

``index.json`` reports the three values per image and their means over the run (and per class).

Empty maps (:func:`~medcli.gradcam.cams.compute_cam_maps`): a map that is constant before normalisation (all
zero is the common case: gradcam++ or scorecam on a barely trained model) carries no information, and its
"top 20 %" would be an arbitrary block of pixels. Such an image gets ``empty_cam: true``, null keep/remove
values and score, and "empty CAM" in its gallery caption; the means leave it out (``n`` counts the scored
maps, ``n_empty`` the empty ones).

Outputs, under ``<run>/gradcam/<split>/`` (replaced as a whole on every call):

* ``<class>/<correct|wrong>/<id>.png``: the image and its overlay side by side (file names from
  :func:`~medcli.gradcam.render.safe_name` / :func:`~medcli.gradcam.render.image_file_name`);
* ``gallery_<class>.png``: every chosen image of the class with true and predicted label and probability;
* ``index.json`` (``medcli.gradcam/1``): ``format``, ``run``, ``method``, ``target``, ``split``,
  ``normalization`` (``"per-image min-max"``), ``n_per_class``, ``seed``, ``target_layer``, ``classes``,
  ``galleries`` (``{class: file}``), ``images`` (``[{id, path, label, pred, prob, correct, explained_class,
  overlay, empty_cam, faithfulness: {prob, prob_keep_top20, prob_remove_top20, drop_keep_top20,
  drop_remove_top20, score}}]``; the last five null when ``empty_cam``) and ``faithfulness`` (``definition``,
  ``fraction``, ``n`` (maps scored), ``n_empty`` (empty maps left out), ``mean_drop_keep_top20``,
  ``mean_drop_remove_top20``, ``mean_score`` (null when every map is empty), ``per_class`` (the same counts
  and means per true class)).
"""

from .cams import (CamMaps, CamMethod, compute_cam_maps, compute_cams, empty_maps, get_method, list_methods, preserved_state,
                   register_method)
from .faithfulness import TOP_FRACTION, confidence_drops, top_masks
from .render import image_file_name, overlay, safe_name
from .run import INDEX_FORMAT, explain_run, load_pixels, output_dir, select_samples, summarize

__all__ = [
    "INDEX_FORMAT",
    "TOP_FRACTION",
    "CamMaps",
    "CamMethod",
    "compute_cam_maps",
    "compute_cams",
    "confidence_drops",
    "empty_maps",
    "explain_run",
    "get_method",
    "image_file_name",
    "list_methods",
    "load_pixels",
    "output_dir",
    "overlay",
    "preserved_state",
    "register_method",
    "safe_name",
    "select_samples",
    "summarize",
    "top_masks",
]

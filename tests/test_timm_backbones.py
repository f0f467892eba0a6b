"""timm backbones as first-class medcli backbones (issue 15), offline: no test reaches the network.

A sample of families, built small with random weights (timm's ``test_*`` architectures, RegNet, and a ViT with
register tokens and a Swin registered with tiny constructor arguments), goes through what medcli does with a
backbone: forward on 1 and 3 channels, stages, every strategy's frozen/trainable sets, Grad-CAM. Weights
round-trip through local files and through a fake Hugging Face cache used with ``HF_HUB_OFFLINE=1`` in a
fresh interpreter (the environment is read when huggingface_hub is imported), as on a compute node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.gradcam.cams import compute_cams
from medcli.models import create_model, get_backbone, load_model, register_timm_backbone, save_model
from medcli.models.timm_backbones import CURATED, search
from medcli.models.weights import resolve_weights
from medcli.strategies import build_plan, set_train_mode

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
NUM_CLASSES = 3

register_timm_backbone("t-vit-reg4", "vit_tiny_patch16_224", overwrite=True, embed_dim=32, depth=2, num_heads=2, reg_tokens=4)
register_timm_backbone("t-swin", "swin_tiny_patch4_window7_224", overwrite=True, embed_dim=16, depths=(1, 1), num_heads=(1, 1))

# name -> (Grad-CAM layout, number of prefix tokens for token models)
FAMILIES = {
    "test_resnet": "nchw",
    "test_convnext": "nchw",
    "test_efficientnet": "nchw",
    "regnetx_002": "nchw",
    "test_vit": "tokens",
    "t-vit-reg4": "tokens",
    "t-swin": "nhwc",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one CPU thread (conftest.py)


def build(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("img_size", SIZE)
    return create_model(name, NUM_CLASSES, **kwargs)


def batch(channels: int = 3, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- names and entries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_entry_is_derived_from_timm(name):
    info = get_backbone(name)
    assert info.family == "timm" and info.cam_layout == FAMILIES[name]
    if name == "t-vit-reg4":
        assert info.timm_name == "vit_tiny_patch16_224" and dict(info.timm_kwargs)["reg_tokens"] == 4
    cfg = timm.models.get_pretrained_cfg(info.timm_name).to_dict()
    assert (info.mean, info.std, info.interpolation) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    assert info.input_size == cfg["input_size"][-1] and info.crop_pct == cfg["crop_pct"]
    assert info.imagenet_weights == f"hf-hub:{cfg['hf_hub_id']}"
    assert get_backbone(name) is info  # cached


def test_tagged_bare_and_curated_names_resolve_offline():
    tagged = get_backbone("test_convnext.r160_in1k")
    assert tagged.pretrained_tag == "r160_in1k" and tagged.stages == get_backbone("test_convnext").stages
    assert get_backbone("convnext_tiny").family == "torchvision"  # medcli's registry wins over timm
    for name, _ in CURATED:
        info = get_backbone(name)
        assert info.family == "timm" and info.imagenet_weights.startswith("hf-hub:timm/"), name
        assert len(info.stages) >= 4, name


def test_unknown_names_are_one_line_errors_with_close_matches():
    with pytest.raises(MedcliError) as exc:
        get_backbone("convnxt_tiny")
    assert "\n" not in str(exc.value) and "convnext_tiny" in str(exc.value) and "--search" in str(exc.value)
    with pytest.raises(MedcliError, match=r"no pretrained tag 'bogus'.*convnext_atto\.d2_in1k"):
        get_backbone("convnext_atto.bogus")
    with pytest.raises(MedcliError, match="hf-hub:timm/foo"):
        get_backbone("timm/foo")


def test_pretrained_is_an_alias_of_imagenet_and_weightless_archs_are_refused():
    assert resolve_weights("test_vit", "pretrained") == "imagenet"
    without = next(a for a in timm.list_models("test_*") if not timm.list_pretrained(a + ".*"))
    with pytest.raises(MedcliError, match="no pretrained weights in timm"):
        resolve_weights(without, "imagenet")


def test_search_marks_pretrained_weights():
    rows = dict(search("dinov2"))
    assert rows["vit_small_patch14_reg4_dinov2.lvd142m"] is True
    bare = dict(search("test_*"))
    assert any(v is False for v in bare.values()) and bare["test_vit.r160_in1k"] is True
    res = CliRunner().invoke(app, ["models", "--search", "vit_small_patch14_dinov2"])
    assert res.exit_code == 0 and "vit_small_patch14_dinov2.lvd142m" in res.output


# --- the model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_on_1_and_3_channels(name):
    for channels in (1, 3):
        model = build(name, in_channels=channels).eval()
        x = batch(channels, n=2)
        with torch.no_grad():
            assert model(x).shape == (2, NUM_CLASSES)
            assert model.trunk(x).shape == (2, model.feature_dim)  # pooled pre-logits
        assert model.trunk.get_submodule(model.input_conv).in_channels == channels


@pytest.mark.parametrize("name", FAMILIES)
def test_stages_run_from_stem_to_head_and_hold_every_parameter_once(name):
    model = build(name)
    order = {id(p): i for i, p in enumerate(model.trunk.parameters())}
    stages = model.stage_parameters()
    flat = [id(p) for group in stages for p in group]
    assert sorted(flat) == sorted(order) and len(set(flat)) == len(flat)
    firsts = [min(order[id(p)] for p in group) for group in stages]
    assert firsts == sorted(firsts) and len(stages) >= 3
    assert any(p is model.trunk.get_submodule(model.input_conv).weight for p in stages[0])
    last_param = list(model.trunk.parameters())[-1]
    assert any(p is last_param for p in stages[-1])


@pytest.mark.parametrize("name", FAMILIES)
def test_strategies_freeze_exactly_what_they_say(name):
    x, y = batch(), torch.tensor([0, 1, 2, 0])
    for strategy in ("linear", "partial", "full", "scratch", "two-phase"):
        model = build(name)
        plan = build_plan(model, strategy, epochs=2, lr=0.1, partial_stages=1, freeze_epochs=1)
        head = {id(p) for p in model.head.parameters()}
        every = {id(p) for p in model.parameters()}
        last_stage = {id(p) for p in model.stage_parameters()[-1]}
        expected = {"linear": [head], "partial": [head | last_stage], "full": [every], "scratch": [every],
                    "two-phase": [head, every]}[strategy]
        for phase, want in zip(plan.phases, expected, strict=True):
            plan.apply(model, phase.start)
            set_train_mode(model, phase)
            trainable = {id(p) for p in phase.trainable}
            assert trainable == want, (strategy, phase.name)
            frozen_buffers = {id(b) for m in phase.eval_modules for b in m.buffers()}
            before = {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
            optimizer = torch.optim.SGD(phase.param_groups, momentum=0.9)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            changed = set()
            for key, p in model.named_parameters():
                if id(p) in trainable:
                    changed.add(not torch.equal(before[key], p.detach()))
                else:
                    assert torch.equal(before[key], p.detach()), (strategy, key)  # bit-identical
            assert True in changed, (strategy, "nothing trained")
            for key, b in model.named_buffers():
                if id(b) in frozen_buffers:
                    assert torch.equal(before[key], b), (strategy, key)  # BatchNorm statistics of frozen parts
        if strategy == "linear":
            assert not any(m.training for m in model.trunk.modules())


@pytest.mark.parametrize("name", FAMILIES)
def test_gradcam_has_the_image_size_and_is_not_constant(name):
    size = 64  # CNNs' last stage has stride 32: a 2 x 2 map at 64 px (1 x 1, necessarily constant, at 32)
    model = build(name, img_size=size).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    # LayerCAM (gradients x activations at the target layer): plain Grad-CAM on random weights often gives
    # legitimately empty maps (all channel weights negative), which would say nothing about the target layer.
    cams = compute_cams(model, x, classes, method="layercam")
    assert cams.shape == (3, size, size)
    assert all(cam.max() > cam.min() for cam in cams)


def test_token_grid_drops_class_and_register_tokens_and_follows_the_input_size():
    model = create_model("t-vit-reg4", NUM_CLASSES, img_size=48)
    transform = model.cam_reshape_transform
    assert transform.num_prefix_tokens == 5
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 48))
    tokens = torch.arange(5 + 9, dtype=torch.float32).reshape(1, 14, 1).expand(1, 14, 2)
    grid = transform(tokens)
    assert grid.shape == (1, 2, 3, 3) and grid[0, 0, 0, 0] == 5  # first patch token, not a prefix token


# --- weights -----------------------------------------------------------------------------------------------


def _trunk_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.trunk.state_dict().items()}


def test_local_safetensors_and_pth_files_round_trip(tmp_path):
    source = build("test_convnext", seed=7)
    file = tmp_path / "trunk.safetensors"
    save_file(_trunk_state(source), str(file))
    loaded = build("test_convnext", seed=8, weights=str(file))
    for key, value in _trunk_state(source).items():
        assert torch.equal(loaded.trunk.state_dict()[key], value), key
    grey = build("test_convnext", seed=9, weights=str(file), in_channels=1)
    assert torch.equal(grey.trunk.stem[0].weight, source.trunk.stem[0].weight.sum(1, keepdim=True))

    # A whole timm model (1000-class head) saved as .pth: the head is dropped, the rest loads strictly.
    torch.manual_seed(3)
    full = timm.create_model("test_convnext")
    torch.save(full.state_dict(), tmp_path / "full.pth")
    from_full = build("test_convnext", weights=str(tmp_path / "full.pth"))
    assert torch.equal(from_full.trunk.stages[3].blocks[0].conv_dw.weight, full.stages[3].blocks[0].conv_dw.weight)
    assert from_full.head.out_features == NUM_CLASSES

    with pytest.raises(MedcliError, match=r"does not fit the test_resnet model") as exc:
        build("test_resnet", weights=str(file))
    assert "\n" not in str(exc.value)


def test_vit_file_made_at_another_size_gets_its_position_embeddings_resized(tmp_path):
    source = build("test_vit", seed=1, img_size=160)  # the architecture's default: 10 x 10 patches
    save_file(_trunk_state(source), str(tmp_path / "vit.safetensors"))
    model = build("test_vit", weights=str(tmp_path / "vit.safetensors"), img_size=SIZE)
    assert model.trunk.pos_embed.shape == (1, 1 + 2 * 2, 64)
    assert torch.equal(model.trunk.blocks[5].mlp.fc2.weight, source.trunk.blocks[5].mlp.fc2.weight)


def test_medcli_model_file_initialises_a_timm_trunk(tmp_path):
    trained = build("t-vit-reg4", seed=4)
    save_model(tmp_path / "model.pt", trained, classes=["a", "b", "c"])
    again = build("t-vit-reg4", seed=5, weights=str(tmp_path / "model.pt"))
    assert all(torch.equal(a, b) for a, b in zip(trained.trunk.state_dict().values(), again.trunk.state_dict().values()))
    reloaded, meta = load_model(tmp_path / "model.pt")
    assert meta["backbone"] == "t-vit-reg4" and reloaded.info.timm_kwargs == trained.info.timm_kwargs


def _hub_http_error(kind, status: int):
    from types import SimpleNamespace

    response = SimpleNamespace(headers={}, status_code=status, request=None, json=lambda: {}, text="")
    return kind(f"{status} from the Hub", response=response)


def test_gated_and_missing_hub_repositories_say_what_to_do(monkeypatch):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from timm.models import _builder

    for kind, status, expected in ((GatedRepoError, 401, r"gated.*request access at https://huggingface.co/timm/test_vit\.r160_in1k.*HF_TOKEN"),
                                   (RepositoryNotFoundError, 404, r"not found on the Hugging Face Hub")):
        def refuse(*args, **kwargs):
            raise _hub_http_error(kind, status)

        monkeypatch.setattr(_builder, "load_state_dict_from_hf", refuse)
        with pytest.raises(MedcliError, match=expected) as exc:
            build("test_vit", weights="imagenet")
        assert "\n" not in str(exc.value)


# --- through the CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "d", layout="presplit", n_classes=3, per_class=8, size=SIZE, noise=0.1)


def _train(runner, data, backbone, strategy, weights, *extra) -> dict:
    epochs = "2" if strategy == "two-phase" else "1"
    args = ["train", "--data", str(data), "--backbone", backbone, "--strategy", strategy, "--weights", weights,
            "--epochs", epochs, "--img-size", str(SIZE), "--batch-size", "8", "--channels", "1", *extra]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run = paths.run_dir("results", "d", backbone, strategy, int(extra[extra.index("--seed") + 1]) if "--seed" in extra else 0, 0)
    return json.loads(Path(paths.config_file(run)).read_text())


@pytest.mark.parametrize("backbone", ["test_convnext", "test_vit"])
def test_every_strategy_trains_through_the_cli_from_a_weights_file(backbone, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / f"{backbone}.safetensors"
    save_file(_trunk_state(build(backbone, seed=11, in_channels=3, img_size=160)), str(file))
    runner = CliRunner()
    for strategy in ("linear", "partial", "full", "two-phase", "scratch"):
        doc = _train(runner, synthetic, backbone, strategy, "none" if strategy == "scratch" else str(file))
        info = get_backbone(backbone)
        assert doc["preprocess"]["interpolation"] == info.interpolation
        if strategy != "scratch":  # pretrained: the weights' own statistics, averaged for one channel
            assert doc["preprocess"]["mean"] == pytest.approx([sum(info.mean) / 3])
    again = _train(runner, synthetic, backbone, "linear", str(file), "--seed", "1")
    assert again["summary"]["feature_cache"]["used"] and not again["summary"]["feature_cache"]["built"]  # reused


_OFFLINE_DRIVER = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from medcli.cli import app
    runner = CliRunner()
    out = {}
    for key, args in json.loads(sys.argv[1]).items():
        res = runner.invoke(app, args)
        out[key] = [res.exit_code, res.output]
    print(json.dumps(out))
    """
)


def _fake_hub_cache(hf_home: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """``$HF_HOME/hub/models--ORG--NAME`` with ``refs/main`` and a snapshot holding ``model.safetensors``."""
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_offline_compute_node_loads_from_the_hub_cache_and_names_the_download_for_the_rest(synthetic, tmp_path):
    torch.manual_seed(5)
    hub_model = timm.create_model("test_resnet.r160_in1k")  # as published: with its 1000-class head
    _fake_hub_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k", hub_model.state_dict())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MEDCLI_NO_PROGRESS": "1"}
    env.pop("HF_HUB_CACHE", None)
    common = ["--data", str(synthetic), "--strategy", "linear", "--epochs", "1", "--img-size", str(SIZE),
              "--batch-size", "8", "--channels", "1", "--weights", "imagenet"]
    commands = {
        "download": ["weights", "download", "test_resnet.r160_in1k"],
        "cached": ["train", "--backbone", "test_resnet.r160_in1k", *common],
        "uncached": ["train", "--backbone", "test_convnext.r160_in1k", *common],
    }
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_DRIVER, json.dumps(commands)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert out["download"][0] == 0 and "model.safetensors" in out["download"][1]
    assert out["cached"][0] == 0, out["cached"][1]
    run = paths.run_dir(tmp_path / "results", "d", "test_resnet.r160_in1k", "linear", 0, 0)
    model, meta = load_model(Path(run) / "model.pt")
    assert meta["weights"] == "imagenet"
    hub = hub_model.state_dict()
    assert torch.equal(model.trunk.layer4[0].conv1.weight, hub["layer4.0.conv1.weight"])  # linear: trunk untouched
    assert torch.equal(model.trunk.conv1[0].weight, hub["conv1.0.weight"].sum(1, keepdim=True))  # 1 channel

    code, text = out["uncached"]
    assert code == 1
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "medcli weights download test_convnext.r160_in1k" in error[0]
    assert "HF_HUB_OFFLINE" in error[0]


def test_help_imports_neither_torch_nor_timm():
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom medcli.cli import app\n"
             "for a in (['--help'], ['train', '--help'], ['models', '--help'], ['weights', 'download', '--help']):\n"
             "    assert CliRunner().invoke(app, a).exit_code == 0\n"
             "print(sorted(m for m in ('torch', 'timm', 'huggingface_hub', 'safetensors') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name, cam_layer, last_stage", [
    ("test_resnet", "layer4", {"layer4"}),
    ("test_convnext", "stages.3", {"stages.3", "head"}),
    ("test_efficientnet", "blocks.4", {"blocks.4", "conv_head"}),
    ("regnetx_002", "s4", {"s4"}),
    ("test_vit", "blocks.5.norm1", {"blocks.5", "norm"}),
    ("t-vit-reg4", "blocks.1.norm1", {"blocks.1", "norm"}),
    ("t-swin", "layers.1", {"layers.1", "norm"}),
])
def test_each_family_gets_the_cam_layer_and_last_stage_the_literature_uses(name, cam_layer, last_stage):
    """ViTs: the last block's norm1 (the class token after the last block ignores the patch tokens); CNNs and Swin:
    the last stage. The last stage (what `partial` trains first) ends with the final norm or neck."""
    info = get_backbone(name)
    assert info.cam_layer == cam_layer
    assert set(info.stages[-1]) >= last_stage and not any(n.startswith(("patch_embed", "stem", "conv_stem")) for n in info.stages[-1])


def test_a_partly_loaded_pretrained_model_is_refused(monkeypatch):
    """timm initialises a first layer it cannot adapt at random (or loads non-strictly) and only logs it: refused."""
    import logging

    from medcli.errors import MedcliError
    from medcli.models import timm_backbones as tb

    info = get_backbone("test_resnet")
    real = tb._create

    def create_and_log(info_, img_size, **kwargs):
        logging.getLogger("timm.models._builder").warning("Unable to convert pretrained conv1 weights, using random init for this layer.")
        kwargs.update(pretrained=False, num_classes=0)
        kwargs.pop("pretrained_cfg_overlay", None)
        return real(info_, img_size, **kwargs)

    monkeypatch.setattr(tb, "_create", create_and_log)
    with pytest.raises(MedcliError, match="loaded only partly into test_resnet .*Unable to convert"):
        tb.build_timm_trunk(info, 1, 32, pretrained=True)
    trunk, _ = tb.build_timm_trunk(info, 1, 32, pretrained=False)  # without pretrained weights nothing is refused
    assert trunk is not None


def test_local_faults_and_build_errors_are_not_blamed_on_the_cache_or_the_image_size():
    import errno

    from medcli.models import timm_backbones as tb

    full = tb.hub_error(OSError(errno.ENOSPC, "No space left on device"), "x.tag", "hf-hub:timm/x.tag")
    assert "could not be read or written locally" in str(full) and "medcli weights download" not in str(full)
    SafetensorError = type("SafetensorError", (Exception,), {})
    corrupt = tb.hub_error(SafetensorError("invalid header"), "x.tag", "hf-hub:timm/x.tag")
    assert "corrupt" in str(corrupt) and "medcli weights download x.tag" in str(corrupt)
    info = get_backbone("test_vit")
    assert "img_size 50" in tb._build_error(info, 50, "w", "Input image size (50*50) doesn't match model")
    other = tb._build_error(info, 50, "the weights file w.pth", "Error: channel mismatch 3 vs 1")
    assert "img_size" not in other and other.startswith("test_vit: the weights file w.pth cannot be used")


def test_a_hub_name_trains_offline_from_the_cache_into_a_folder_safe_run_folder(synthetic, tmp_path):
    """`hf-hub:ORG/NAME`: timm reads the repository's config.json and weights from the Hugging Face cache."""
    torch.manual_seed(6)
    hub_model = timm.create_model("test_resnet.r160_in1k")
    weights = _fake_hub_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k", hub_model.state_dict())
    cfg = timm.models.get_pretrained_cfg("test_resnet.r160_in1k").to_dict()
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": cfg}))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MEDCLI_NO_PROGRESS": "1"}
    env.pop("HF_HUB_CACHE", None)
    name = "hf-hub:timm/test_resnet.r160_in1k"
    commands = {"hub": ["train", "--backbone", name, "--data", str(synthetic), "--strategy", "linear", "--epochs", "1",
                        "--img-size", str(SIZE), "--batch-size", "8", "--channels", "3", "--weights", "imagenet"]}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_DRIVER, json.dumps(commands)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, text = json.loads(proc.stdout.strip().splitlines()[-1])["hub"]
    assert code == 0, text
    run = Path(paths.run_dir(tmp_path / "results", "d", name, "linear", 0, 0))
    assert run.parent.parent.name == "hf-hub%3Atimm%2Ftest_resnet.r160_in1k__linear"  # one folder, parsed back
    assert paths.parse_run_dir(run).backbone == name
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]  # rebuilding the model would need the Hub config
    assert torch.equal(state["trunk.layer4.0.conv1.weight"], hub_model.state_dict()["layer4.0.conv1.weight"])
    record = json.loads((run / "config.json").read_text())["backbone"]
    assert record["family"] == "timm" and record["weights_source"] == name

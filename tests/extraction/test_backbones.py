"""Backbones: weights resolution (hub cache, local file, random), preprocessing, Caffe conversion."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.models import VGG16_Weights, vgg16

from hashtagkit import provenance
from hashtagkit.backbones import IMAGENET, PLACES365_CAFFE, load_backbone, parse_backbone_option
from hashtagkit.backbones.caffe import CaffeLayer, read_caffemodel, write_caffemodel
from hashtagkit.backbones.registry import RandomWeightsWarning
from hashtagkit.backbones.torchvision_weights import cached_path
from hashtagkit.cli.main import cli
from hashtagkit.errors import InputError

from ..conftest import SHARED, make_store, need_data

LENET = SHARED / "fixtures" / "caffe" / "lenet_iter_10000.caffemodel"


@pytest.fixture(scope="session")
def vgg_state():
    torch.manual_seed(0)
    return vgg16(weights=None).state_dict()


@pytest.fixture(scope="session")
def vgg_file(vgg_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vgg16_random.pth"
    torch.save(vgg_state, path)
    return path


def photo(seed=0, size=(300, 220)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8))


def test_imagenet_preprocessing_equals_torchvision():
    img = photo()
    ours = IMAGENET(img)
    theirs = VGG16_Weights.IMAGENET1K_V1.transforms()(img)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_caffe_preprocessing_is_bgr_minus_mean():
    img = photo(1)
    x = PLACES365_CAFFE(img)
    resized = np.asarray(img.resize((256, 256), Image.BILINEAR), dtype=np.float32)
    # PIL's bilinear resize antialiases like torchvision's; compare the centre crop by hand
    crop = resized[16:240, 16:240]
    expected = crop[:, :, ::-1] - np.array([104.051, 112.514, 116.676], dtype=np.float32)
    assert x.shape == (3, 224, 224)
    assert np.abs(x.permute(1, 2, 0).numpy() - expected).max() < 1.01  # rounding of the resize only
    assert torch.isclose(x[0].mean() + 104.051, torch.tensor(crop[:, :, 2].mean()), atol=0.1)  # channel 0 is blue


@pytest.mark.slow
def test_local_weights_file_loads_and_is_recorded(vgg_file, vgg_state):
    loaded = load_backbone("vgg16-object", str(vgg_file))
    assert loaded.weights["sha256"] == hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    assert loaded.weights["source"] == "file"
    assert torch.equal(loaded.module.features[0].weight, vgg_state["features.0.weight"])
    with pytest.raises(InputError, match="sha256"):
        load_backbone("vgg16-object", str(vgg_file), expect_sha256="0" * 64)


def test_wrong_architecture_file_is_refused(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(InputError, match="does not fit vgg16-object"):
        load_backbone("vgg16-object", str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable"):
        load_backbone("vgg16-object", str(tmp_path / "junk.pth"))


@pytest.mark.slow
def test_torch_hub_cache_is_used(vgg_file, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = cached_path(VGG16_Weights.IMAGENET1K_V1)
    assert target.name == "vgg16-397923af.pth" and str(tmp_path) in str(target)

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(VGG16_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_network)
    with pytest.raises(InputError, match="not in the torch hub cache"):
        load_backbone("vgg16-object")
    target.parent.mkdir(parents=True)
    target.write_bytes(vgg_file.read_bytes())
    loaded = load_backbone("vgg16-object")
    assert loaded.weights["source"] == "default" and loaded.weights["path"] == str(target.resolve())


def test_scene_default_says_how_to_convert(monkeypatch, tmp_path):
    monkeypatch.setenv("HASHTAGKIT_WEIGHTS", str(tmp_path))
    with pytest.raises(InputError, match="convert-caffe vgg16_places365.caffemodel"):
        load_backbone("vgg16-scene")


def test_random_is_explicit_warned_and_recorded():
    with pytest.warns(RandomWeightsWarning, match="RANDOM"):
        loaded = load_backbone("resnet50-object", "random", seed=3)
    assert loaded.weights == {"source": "random", "seed": 3, "sha256": None, "path": None}
    assert parse_backbone_option("vgg16-scene=random") == ("vgg16-scene", "random")
    with pytest.raises(InputError, match="unknown backbone"):
        parse_backbone_option("vgg19=random")


# --- Caffe ---------------------------------------------------------------------------------------
def test_real_lenet_caffemodel():
    need_data(LENET.is_file(), f"{LENET} absent (../shared not beside the repository)")
    assert hashlib.md5(LENET.read_bytes()).hexdigest() == "cbec75c1c374b6c1981c4a1eb024ae01"
    layers = {layer.name: layer for layer in read_caffemodel(LENET) if layer.blobs}
    shapes = {name: [b.shape for b in layer.blobs] for name, layer in layers.items()}
    assert shapes == {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)],
                      "ip1": [(500, 800), (500,)], "ip2": [(10, 500), (10,)]}
    # trained weights, not zeros or garbage
    assert all(np.isfinite(b).all() and b.std() > 1e-3 for layer in layers.values() for b in layer.blobs)


def test_convert_raw_on_lenet(tmp_path):
    need_data(LENET.is_file(), f"{LENET} absent")
    out = tmp_path / "lenet.pth"
    res = CliRunner().invoke(cli, ["convert-caffe", str(LENET), "--arch", "raw", "-o", str(out)])
    assert res.exit_code == 0, res.output
    payload = torch.load(out, weights_only=True)
    state = payload["state_dict"]
    assert payload["hashtagkit"]["preprocessing"] is None and payload["hashtagkit"]["block"] is None
    assert state["ip1.weight"].shape == (500, 800) and state["conv2.bias"].shape == (50,)
    # the converted LeNet runs as the Caffe net is defined (conv-pool-conv-pool-ip-relu-ip)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5), torch.nn.MaxPool2d(2), torch.nn.Conv2d(20, 50, 5), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(800, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10))
    net.load_state_dict({f"{i}.{k.split('.')[1]}": v for k, v in state.items()
                         for i in [{"conv1": 0, "conv2": 2, "ip1": 5, "ip2": 7}[k.split(".")[0]]]})
    # a drawn "1" (a vertical bar) in MNIST's 0..1 scale (Caffe's scale 0.00390625)
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 4:24, 13:16] = 1.0
    assert net(img).argmax().item() == 1


@pytest.mark.slow
def test_vgg16_caffemodel_round_trip_is_exact(vgg_state, tmp_path):
    names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8a"]
    keys = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)] + \
           ["classifier.0", "classifier.3", "classifier.6"]
    layers = [CaffeLayer("data", "Input")]
    for name, key in zip(names, keys, strict=True):
        layers.append(CaffeLayer(name, "Convolution" if name.startswith("conv") else "InnerProduct",
                                 [vgg_state[f"{key}.weight"].numpy(), vgg_state[f"{key}.bias"].numpy()]))
    model = tmp_path / "vgg16.caffemodel"
    write_caffemodel(model, layers)
    out = tmp_path / "vgg16.pth"
    res = CliRunner().invoke(cli, ["convert-caffe", str(model), "-o", str(out), "--keep-fc8"])
    assert res.exit_code == 0, res.output
    payload = torch.load(out, weights_only=True)
    state, meta = payload["state_dict"], payload["hashtagkit"]
    assert set(state) == set(vgg_state)
    assert all(torch.equal(state[k], vgg_state[k]) for k in state)
    # the file says what it expects: Caffe pixels, the scene block, its source
    assert meta["kind"] == "weights" and meta["arch"] == "vgg16" and meta["block"] == "scene"
    assert meta["preprocessing"] == PLACES365_CAFFE.describe()
    assert meta["source"] == {"caffemodel": "vgg16.caffemodel", "sha256": provenance.sha256_file(model)}
    dropped = tmp_path / "no_fc8.pth"
    assert CliRunner().invoke(cli, ["convert-caffe", str(model), "-o", str(dropped)]).exit_code == 0
    assert "classifier.6.weight" not in torch.load(dropped, weights_only=True)["state_dict"]
    loaded = load_backbone("vgg16-scene", str(dropped))  # loads without fc8
    assert torch.equal(loaded.module.classifier[3].weight, vgg_state["classifier.3.weight"])
    assert loaded.preprocessing == PLACES365_CAFFE and loaded.weights["metadata"]["block"] == "scene"
    # a Caffe (BGR 0-255) file is refused as the ImageNet (RGB 0-1) backbone...
    with pytest.raises(InputError, match="places365-caffe.*preprocessing vgg16-object=weights"):
        load_backbone("vgg16-object", str(dropped))
    # ... unless the user says which pixels to feed it
    assert load_backbone("vgg16-object", str(dropped), preprocessing="weights").preprocessing == PLACES365_CAFFE
    assert load_backbone("vgg16-object", str(dropped), preprocessing="imagenet").preprocessing == IMAGENET
    make_store(tmp_path / "s.zarr", n=4, features=False, test=1)
    res = CliRunner().invoke(cli, ["extract", str(tmp_path / "s.zarr"), "--images", str(tmp_path),
                                   "--backbone", f"vgg16-object={dropped}"])
    assert res.exit_code == 2 and "--preprocessing" in res.output
    # an ImageNet-preprocessing file is accepted as vgg16-object without any flag
    imagenet = tmp_path / "imagenet.pth"
    assert CliRunner().invoke(cli, ["convert-caffe", str(model), "-o", str(imagenet), "--preprocessing", "imagenet",
                                    "--block", "object"]).exit_code == 0
    assert load_backbone("vgg16-object", str(imagenet)).preprocessing == IMAGENET


def test_legacy_layers_with_4d_shapes(tmp_path):
    rng = np.random.default_rng(0)
    conv, fc, bias = rng.random((4, 3, 3, 3), dtype=np.float32), rng.random((6, 10), dtype=np.float32), rng.random(6, dtype=np.float32)
    model = tmp_path / "old.caffemodel"
    write_caffemodel(model, [CaffeLayer("c", "", [conv]), CaffeLayer("f", "", [fc, bias])], legacy=True)
    layers = {layer.name: layer for layer in read_caffemodel(model)}
    assert np.array_equal(layers["c"].blobs[0], conv)
    assert np.array_equal(layers["f"].blobs[0], fc) and np.array_equal(layers["f"].blobs[1], bias)


def test_bad_caffemodels(tmp_path):
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    res = CliRunner().invoke(cli, ["convert-caffe", str(tmp_path / "junk.caffemodel"), "-o", str(tmp_path / "o.pth")])
    assert res.exit_code == 2 and "caffemodel" in res.output and not (tmp_path / "o.pth").exists()
    small = tmp_path / "small.caffemodel"
    write_caffemodel(small, [CaffeLayer("conv1", "Convolution", [np.zeros((2, 1, 3, 3), np.float32)])])
    res = CliRunner().invoke(cli, ["convert-caffe", str(small), "-o", str(tmp_path / "o.pth")])
    assert res.exit_code == 2 and "not a VGG-16 caffemodel" in res.output

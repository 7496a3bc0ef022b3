"""fedsim.models: built-ins, the torchvision adapter, and the base/head split."""

from __future__ import annotations

import subprocess
import sys
import urllib.error

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedsim.errors import FedsimError
from fedsim.models import (
    BUILTIN_MODELS,
    bn_state_keys,
    build_model,
    describe_split,
    find_head,
    model_names,
    split_state_keys,
    split_summary,
    torchvision_model_names,
)

DIGITS, MNIST, CIFAR, SYNTHETIC = (1, 8, 8), (1, 28, 28), (3, 32, 32), (60,)
# the built-ins for images and vectors (char-lstm takes character sequences: tested on its own)
DENSE_MODELS = tuple(m for m in BUILTIN_MODELS if m not in ("char-lstm", "fasttext", "transformer", "sent140-lstm"))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**{k: v.detach().clone() for k, v in model.named_parameters()},
            **{k: v.clone() for k, v in model.named_buffers()}}


def run(model: nn.Module, shape: tuple[int, ...], batch: int = 2, train: bool = True) -> torch.Tensor:
    model.train(train)
    x = torch.randn(batch, *shape)
    return functional_call(model, state(model), (x,))


# ------------------------------------------------------------------------------------------ built-ins


def test_model_names_are_the_builtins():
    assert model_names() == list(BUILTIN_MODELS) == ["mlp", "cnn", "cnn-bn", "fedavgcnn", "lenet5", "logreg",
                                                     "char-lstm", "femnist-cnn", "celeba-cnn", "fasttext",
                                                     "transformer", "sent140-lstm"]
    assert "resnet18" in torchvision_model_names()
    assert "fasterrcnn_resnet50_fpn" not in torchvision_model_names()


def test_importing_models_does_not_import_torchvision():
    code = "import sys, fedsim.models as m; m.model_names(); print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name, shape, count", [
    ("mlp", MNIST, 199_210),
    ("cnn", MNIST, 1_663_370),
    ("fedavgcnn", MNIST, 582_026),
    ("logreg", SYNTHETIC, 610),
    ("cnn-bn", MNIST, 1_663_370 + 2 * (32 + 64)),
    ("lenet5", MNIST, 156 + 2_416 + (256 * 120 + 120) + (120 * 84 + 84) + 850),
    ("lenet5", CIFAR, 456 + 2_416 + (400 * 120 + 120) + (120 * 84 + 84) + 850),
    ("femnist-cnn", MNIST, 832 + 51_264 + (3_136 * 2_048 + 2_048) + (2_048 * 10 + 10)),  # LEAF's, 2048 hidden
    ("celeba-cnn", (3, 84, 84), 896 + 3 * 9_248 + 4 * 64 + (32 * 6 * 6 * 10 + 10)),  # 84 -> 42 -> 21 -> 11 -> 6
])
def test_param_counts(name, shape, count):
    assert n_params(build_model(name, shape, 10)) == count


@pytest.mark.parametrize("name", DENSE_MODELS)
@pytest.mark.parametrize("shape", [DIGITS, MNIST, CIFAR, SYNTHETIC, (3, 30, 17)])
def test_builtins_forward_on_every_shape(name, shape):
    if len(shape) == 1 and name not in ("mlp", "logreg"):
        with pytest.raises(FedsimError, match=rf"model {name} needs image inputs .* 60 features: use mlp or logreg"):
            build_model(name, shape, 10)
        return
    model = build_model(name, shape, 7)
    for train in (True, False):
        assert run(model, shape, train=train).shape == (2, 7)


def test_char_lstm_is_leafs_model_on_character_indices():
    model = build_model("char-lstm", (80,), 81)
    lstm = model.lstm
    assert (model.embedding.num_embeddings, model.embedding.embedding_dim) == (81, 8)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (8, 256, 2, True)
    assert (model.fc.in_features, model.fc.out_features) == (256, 81)
    x = torch.randint(0, 81, (3, 80))
    for train in (True, False):
        model.train(train)
        assert functional_call(model, state(model), (x,)).shape == (3, 81)
    assert find_head(model) == ["fc"]
    with pytest.raises(FedsimError, match="int64 character indices"):
        model(torch.zeros(2, 80))
    with pytest.raises(FedsimError, match=r"model char-lstm takes sequences .* shape \(1, 28, 28\)"):
        build_model("char-lstm", MNIST, 10)


def test_small_images_are_upsampled_inside_the_model():
    assert build_model("fedavgcnn", DIGITS, 10).resize_to == (16, 16)
    assert build_model("lenet5", (1, 8, 20), 10).resize_to == (16, 20)
    assert build_model("lenet5", MNIST, 10).resize_to is None
    assert build_model("cnn", DIGITS, 10).resize_to is None  # 'same' padding: 8 -> 4 -> 2
    assert build_model("cnn", (1, 3, 3), 10).resize_to == (4, 4)


def test_builtin_classifier_is_fc_and_bn_names():
    for name in DENSE_MODELS:
        model = build_model(name, MNIST, 10)
        assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    names = dict(build_model("cnn-bn", MNIST, 10).named_modules())
    assert isinstance(names["bn1"], nn.BatchNorm2d) and isinstance(names["bn2"], nn.BatchNorm2d)


def test_builtins_work_under_vmap_grad():
    model = build_model("fedavgcnn", DIGITS, 10)
    params = {k: v.detach() for k, v in model.named_parameters()}
    stacked = {k: torch.stack([v, v + 0.01]) for k, v in params.items()}
    x, y = torch.randn(2, 4, *DIGITS), torch.randint(0, 10, (2, 4))

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    grads = torch.func.vmap(torch.func.grad(loss))(stacked, x, y)
    assert grads["fc.weight"].shape == (2, 10, 512)


# ------------------------------------------------------------------------------------------ errors


def test_unknown_model_name():
    with pytest.raises(FedsimError) as err:
        build_model("resnt18", MNIST, 10)
    msg = str(err.value)
    assert "unknown model 'resnt18'" in msg and "mlp, cnn, cnn-bn" in msg and "did you mean 'resnet18'" in msg
    assert "torchvision classification model" in msg and "package.module:attr" in msg and "\n" not in msg


def test_non_classifier_torchvision_name():
    with pytest.raises(FedsimError, match="not an image classifier"):
        build_model("fasterrcnn_resnet50_fpn", CIFAR, 10)


@pytest.mark.parametrize("shape, classes", [((1, 28), 10), ((0, 8, 8), 10), ((1, 8, 8), 0), ("abc", 10)])
def test_bad_shapes_and_classes(shape, classes):
    with pytest.raises(FedsimError):
        build_model("mlp", shape, classes)


def test_numpy_and_tensor_class_counts():
    import numpy as np

    assert build_model("mlp", np.array([1, 8, 8]), np.int64(10)).fc.out_features == 10
    assert build_model("logreg", torch.Size([60]), torch.tensor(3)).fc.out_features == 3


def test_name_is_forgiving_about_case_and_underscores():
    assert isinstance(build_model("CNN_BN", DIGITS, 10).bn1, nn.BatchNorm2d)


def test_builtin_pretrained_is_an_error():
    with pytest.raises(FedsimError, match="no pretrained weights"):
        build_model("cnn", MNIST, 10, pretrained=True)


def test_torchvision_on_vectors_is_an_error():
    with pytest.raises(FedsimError, match="resnet18 needs image inputs .* use mlp or logreg"):
        build_model("resnet18", SYNTHETIC, 10)


def test_pretrained_offline_and_uncached_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FedsimError) as err:
        build_model("resnet18", MNIST, 10, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg and "pretrained weights for resnet18" in msg and str(tmp_path) in msg
    assert "Name or service not known" in msg and "drop --pretrained" in msg


def test_pretrained_path_with_cached_weights(tmp_path, monkeypatch):
    """With weights 'in the cache', the 1000-class fc is replaced and the grey stem sums RGB kernels."""
    import torchvision

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[1]).write_bytes(b"cached")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url",
                        lambda *a, **k: imagenet.state_dict())
    model = build_model("resnet18", MNIST, 10, pretrained=True)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert run(model, MNIST).shape == (2, 10)


# ------------------------------------------------------------------------------------------ torchvision


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_model("vit_b_16", (1, 12, 12), 10)


def test_vit_on_tiny_grey_input(vit):
    assert vit.image_size == 16 and vit.fedsim_input_size == (16, 16)  # 12 rounded up to the patch size
    assert vit.conv_proj.in_channels == 1
    assert run(vit, (1, 12, 12), train=True).shape == (2, 10)
    assert run(vit, (1, 12, 12), train=False).shape == (2, 10)
    assert find_head(vit) == ["heads.head"]


@pytest.mark.parametrize("name, shape", [
    ("resnet18", DIGITS), ("resnet18", (1, 16, 16)), ("mobilenet_v3_small", (1, 16, 16)),
    ("mobilenet_v3_small", (3, 16, 16)), ("resnet18", (2, 16, 16)),
])
def test_torchvision_forward_through_functional_call(name, shape):
    model = build_model(name, shape, 10)
    for train in (True, False):
        assert run(model, shape, train=train).shape == (2, 10)


def test_grey_stem_equals_the_rgb_model_on_repeated_grey():
    torch.manual_seed(1)
    rgb = build_model("resnet18", (3, 16, 16), 10).eval()
    torch.manual_seed(1)
    grey = build_model("resnet18", (1, 16, 16), 10).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


def test_models_that_need_bigger_inputs_get_a_resize_hook():
    model = build_model("squeezenet1_1", (1, 16, 16), 10)  # documented minimum: 17x17
    assert model.fedsim_input_size == (17, 17)
    assert run(model, (1, 16, 16), train=False).shape == (2, 10)
    assert build_model("resnet18", DIGITS, 10).fedsim_input_size == (8, 8)  # no resize needed


# ------------------------------------------------------------------------------------------ head / split


@pytest.mark.parametrize("name, head", [
    ("resnet18", "fc"), ("resnet34", "fc"), ("mobilenet_v3_small", "classifier.3"),
    ("efficientnet_b0", "classifier.1"), ("vgg11", "classifier.6"), ("convnext_tiny", "classifier.2"),
    ("densenet121", "classifier"), ("swin_t", "head"), ("vit_b_16", "heads.head"),
    ("googlenet", "fc"), ("inception_v3", "fc"),
])
def test_default_head_of_torchvision_families(name, head):
    with torch.device("meta"):  # no memory, no init cost: only the module tree matters here
        model = build_model(name, (3, 32, 32), 7)
    assert find_head(model) == [head]
    assert model.get_submodule(head).out_features == 7


@pytest.mark.parametrize("name", [m for m in DENSE_MODELS if m != "logreg"])
def test_default_head_of_builtins(name):
    model = build_model(name, MNIST, 10)
    assert find_head(model) == ["fc"]
    base, head = split_state_keys(model, ["fc"])
    assert head == ["fc.weight", "fc.bias"]
    assert set(base) | set(head) == set(state(model)) and not set(base) & set(head)


def test_split_keys_cover_buffers_in_order():
    model = build_model("cnn-bn", MNIST, 10)
    base, head = split_state_keys(model, find_head(model))
    keys = [k for k, _ in model.named_parameters()] + [k for k, _ in model.named_buffers()]
    assert [k for k in keys if k in base] == base and "bn1.running_mean" in base
    assert head == ["fc.weight", "fc.bias"]


def test_head_override_string_and_list():
    model = build_model("mlp", MNIST, 10)
    assert find_head(model, "fc2, fc") == ["fc2", "fc"]
    assert find_head(model, ["fc2", "fc"]) == ["fc2", "fc"]
    base, head = split_state_keys(model, "fc2,fc")
    assert base == ["fc1.weight", "fc1.bias"] and head == ["fc2.weight", "fc2.bias", "fc.weight", "fc.bias"]
    with torch.device("meta"):
        mobilenet = build_model("mobilenet_v3_small", (3, 32, 32), 10)
    _, head = split_state_keys(mobilenet, find_head(mobilenet, "classifier"))
    assert head == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


def test_unknown_head_name_lists_candidates():
    model = build_model("cnn", MNIST, 10)
    with pytest.raises(FedsimError) as err:
        find_head(model, "fc3")
    msg = str(err.value)
    assert "unknown head module 'fc3'" in msg and "conv1" in msg and "fc1" in msg and "\n" not in msg
    with pytest.raises(FedsimError, match="module names, not parameter names: use 'fc'"):
        find_head(model, "fc.weight")


def test_no_linear_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 10, 3), nn.Flatten())
    with pytest.raises(FedsimError) as err:
        find_head(model)
    msg = str(err.value)
    assert "no nn.Linear" in msg and "--head" in msg and "2" in msg  # '2' is the last conv: a choice
    assert find_head(model, "2") == ["2"]


def test_squeezenet_needs_an_explicit_head():
    with torch.device("meta"):
        model = build_model("squeezenet1_1", (3, 32, 32), 10)
    with pytest.raises(FedsimError, match="classifier"):
        find_head(model)
    assert find_head(model, "classifier") == ["classifier"]


def test_head_that_is_the_whole_model_or_empty():
    with pytest.raises(FedsimError, match="no shared base"):
        find_head(build_model("logreg", SYNTHETIC, 10))
    with pytest.raises(FedsimError, match="no base"):
        find_head(nn.Linear(4, 2))
    mlp = build_model("mlp", MNIST, 10)
    with pytest.raises(FedsimError, match="no shared base"):
        find_head(mlp, "fc1,fc2,fc")
    with torch.device("meta"):
        resnet = build_model("resnet18", (3, 32, 32), 10)
    with pytest.raises(FedsimError, match="holds no parameters"):
        find_head(resnet, "avgpool")


def test_bn_state_keys():
    keys = bn_state_keys(build_model("cnn-bn", MNIST, 10))
    assert set(keys) == {f"bn{i}.{s}" for i in (1, 2) for s in
                         ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert bn_state_keys(build_model("cnn", MNIST, 10)) == []
    with torch.device("meta"):
        resnet = build_model("resnet18", (3, 32, 32), 10)
    keys = bn_state_keys(resnet)
    for k in ("bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked", "layer4.1.bn2.weight",
              "layer2.0.downsample.1.running_mean"):
        assert k in keys
    assert not any(k.startswith(("conv1", "fc", "layer1.0.conv1")) for k in keys)
    assert len(keys) == 20 * 5


def test_describe_split():
    model = build_model("mlp", MNIST, 10)
    text = describe_split(model, find_head(model))
    assert "199,210 parameters" in text and "head: 2,010 parameters" in text and "fc.weight" in text
    summary = split_summary(model, ["fc"])
    assert summary["base_params"] == 197_200 and summary["base_modules"] == ["fc1", "fc2"]

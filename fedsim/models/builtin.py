"""The built-in models of the FL literature, sized to the dataset (channels, image size, classes).

Every built-in names its classifier (last) layer ``fc``; hidden Linear layers are ``fc1``, ``fc2``,
convolutions ``conv1``, ``conv2`` and their BatchNorms ``bn1``, ``bn2``. Activations and pooling are
functional, so ``named_modules()`` lists only layers that hold state.

Small images: a conv model whose valid convolutions and poolings need more pixels than the data has
(``fedavgcnn`` and ``lenet5`` need 16x16, ``cnn`` needs 4x4) upsamples its input inside ``forward``
(bilinear) to the smallest size it accepts, e.g. sklearn digits 8x8 -> 16x16. Larger inputs are used as
they are. Vector inputs (D,) go only to ``mlp`` and ``logreg``; a conv model on vectors is a FedsimError.
``char-lstm`` takes (L,) sequences of int64 character indices (the Shakespeare dataset) and names its layers
``embedding``, ``lstm``, ``fc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.errors import FedsimError

VECTOR_MODELS = ("mlp", "logreg")


def _conv_out(size: int, kernel: int, padding: int = 0) -> int:
    return size + 2 * padding - kernel + 1


def _resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _upsample_target(hw: tuple[int, int], min_hw: int) -> tuple[int, int] | None:
    """The size to upsample an (H, W) image to so both sides are >= min_hw, or None when it fits."""
    h, w = hw
    if h >= min_hw and w >= min_hw:
        return None
    return max(h, min_hw), max(w, min_hw)


class MLP(nn.Module):
    """McMahan et al.'s 2NN: flatten -> 200 -> ReLU -> 200 -> ReLU -> classes (199,210 params on MNIST)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 200):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc(x)


class LogReg(nn.Module):
    """Multinomial logistic regression (FedProx): flatten -> Linear(D -> classes); 610 params on (60,)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class CNN(nn.Module):
    """McMahan et al.'s CNN with 'same' padding (1,663,370 params on MNIST); ``batch_norm`` adds BN.

    conv5x5(C->32, pad 2) [BN] ReLU maxpool2 -> conv5x5(32->64, pad 2) [BN] ReLU maxpool2
    -> FC(64 * H/4 * W/4 -> 512) ReLU -> FC(512 -> classes). Inputs under 4x4 are upsampled to 4x4.
    """

    min_size = 4

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 batch_norm: bool = False):
        super().__init__()
        self.resize_to = _upsample_target(image_size, self.min_size)
        h, w = self.resize_to or image_size
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(32) if batch_norm else None
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(64) if batch_norm else None
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.resize_to)
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        x = F.max_pool2d(F.relu(x), 2)
        x = self.conv2(x)
        if self.bn2 is not None:
            x = self.bn2(x)
        x = F.max_pool2d(F.relu(x), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc(x)


class FedAvgCNN(nn.Module):
    """PFLlib's FedAvgCNN, valid padding (582,026 params on MNIST); inputs under 16x16 are upsampled.

    conv5x5(C->32) ReLU maxpool2 -> conv5x5(32->64) ReLU maxpool2 -> FC(dim -> 512) ReLU -> FC(classes).
    """

    min_size = 16

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int):
        super().__init__()
        self.resize_to = _upsample_target(image_size, self.min_size)
        h, w = self.resize_to or image_size
        self.conv1 = nn.Conv2d(in_channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        h, w = _conv_out(_conv_out(h, 5) // 2, 5) // 2, _conv_out(_conv_out(w, 5) // 2, 5) // 2
        self.fc1 = nn.Linear(64 * h * w, 512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.resize_to)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc(x)


class LeNet5(nn.Module):
    """NIID-Bench's simple-cnn (LeNet-5): conv5x5(C->6) -> conv5x5(6->16) -> 120 -> 84 -> classes.

    ReLU and 2x2 max pooling after each conv; flatten is 16*4*4 on 28x28 and 16*5*5 on 32x32.
    Inputs under 16x16 are upsampled to 16x16.
    """

    min_size = 16

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int):
        super().__init__()
        self.resize_to = _upsample_target(image_size, self.min_size)
        h, w = self.resize_to or image_size
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        h, w = _conv_out(_conv_out(h, 5) // 2, 5) // 2, _conv_out(_conv_out(w, 5) // 2, 5) // 2
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.resize_to)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc(x)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model (models/shakespeare/stacked_lstm.py): an 8-dimensional embedding of the characters,
    two LSTM layers of 256, and a Linear from the last step's hidden state to the vocabulary (the next character).
    Inputs are (N, L) int64 character indices; the vocabulary is the classes."""

    def __init__(self, vocab_size: int, embedding: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise FedsimError(f"model char-lstm takes int64 character indices (e.g. --dataset shakespeare), got "
                              f"{x.dtype} inputs")
        out, _ = self.lstm(self.embedding(x))
        return self.fc(out[:, -1])


def _needs_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
    if len(input_shape) != 3:
        raise FedsimError(
            f"model {name} needs image inputs (C, H, W) but the data gives vectors of {input_shape[0]} "
            f"features: use {' or '.join(VECTOR_MODELS)}"
        )
    c, h, w = input_shape
    return c, (h, w)


def _mlp(input_shape, num_classes):
    return MLP(math.prod(input_shape), num_classes)


def _logreg(input_shape, num_classes):
    return LogReg(math.prod(input_shape), num_classes)


def _cnn(input_shape, num_classes):
    c, hw = _needs_image("cnn", input_shape)
    return CNN(c, hw, num_classes)


def _cnn_bn(input_shape, num_classes):
    c, hw = _needs_image("cnn-bn", input_shape)
    return CNN(c, hw, num_classes, batch_norm=True)


def _fedavgcnn(input_shape, num_classes):
    c, hw = _needs_image("fedavgcnn", input_shape)
    return FedAvgCNN(c, hw, num_classes)


def _lenet5(input_shape, num_classes):
    c, hw = _needs_image("lenet5", input_shape)
    return LeNet5(c, hw, num_classes)


def _char_lstm(input_shape, num_classes):
    if len(input_shape) != 1:
        raise FedsimError(f"model char-lstm takes sequences of character indices, (L,) per sample, but the data "
                          f"gives samples of shape {tuple(input_shape)}: use it with --dataset shakespeare")
    return CharLSTM(num_classes)


# name -> (builder(input_shape, num_classes) -> nn.Module, one-line description)
BUILTINS = {
    "mlp": (_mlp, "McMahan 2NN: flatten -> 200 -> 200 -> classes (images or vectors)"),
    "cnn": (_cnn, "McMahan CNN, 'same' padding: conv32 -> conv64 -> FC512 -> classes"),
    "cnn-bn": (_cnn_bn, "the cnn with BatchNorm2d after each conv"),
    "fedavgcnn": (_fedavgcnn, "PFLlib FedAvgCNN, valid padding: conv32 -> conv64 -> FC512 -> classes"),
    "lenet5": (_lenet5, "NIID-Bench simple-cnn (LeNet-5): conv6 -> conv16 -> 120 -> 84 -> classes"),
    "logreg": (_logreg, "multinomial logistic regression: flatten -> Linear(D -> classes)"),
    "char-lstm": (_char_lstm, "LEAF's Shakespeare model: embedding 8 -> LSTM 256 -> LSTM 256 -> next character"),
}


def build_builtin(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    builder, _ = BUILTINS[name]
    return builder(input_shape, num_classes)

"""The built-in models of the FL literature, sized to the dataset (channels, image size, classes).

Every built-in names its classifier (last) layer ``fc``; hidden Linear layers are ``fc1``, ``fc2``,
convolutions ``conv1``, ``conv2`` and their BatchNorms ``bn1``, ``bn2``. Activations and pooling are
functional, so ``named_modules()`` lists only layers that hold state.

Small images: a conv model whose valid convolutions and poolings need more pixels than the data has
(``fedavgcnn`` and ``lenet5`` need 16x16, ``cnn`` needs 4x4) upsamples its input inside ``forward``
(bilinear) to the smallest size it accepts, e.g. sklearn digits 8x8 -> 16x16. Larger inputs are used as
they are. Vector inputs (D,) go only to ``mlp`` and ``logreg``; a conv model on vectors is a FedsimError.
``char-lstm`` takes (L,) sequences of int64 character indices (the Shakespeare dataset) and names its layers
``embedding``, ``lstm``, ``fc``. The text models (``fasttext``, ``transformer``, ``sent140-lstm``) take (L,) int64
token ids of a text dataset and size their ``embedding`` by its vocabulary (token 0 is padding); when the dataset
read word vectors (``--embeddings``), the embedding starts from them, as wide as they are, and is trained.
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
                 batch_norm: bool = False, hidden: int = 512):
        super().__init__()
        self.resize_to = _upsample_target(image_size, self.min_size)
        h, w = self.resize_to or image_size
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(32) if batch_norm else None
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(64) if batch_norm else None
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), hidden)
        self.fc = nn.Linear(hidden, num_classes)

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


class CelebaCNN(nn.Module):
    """LEAF's CelebA model (models/celeba/cnn.py): four times conv3x3(32, 'same') -> BatchNorm -> maxpool 2 ('same':
    the size rounds up) -> ReLU, then a Linear to the classes (31,202 parameters on 84x84x3)."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int, blocks: int = 4):
        super().__init__()
        h, w = image_size
        for i in range(1, blocks + 1):
            setattr(self, f"conv{i}", nn.Conv2d(in_channels if i == 1 else 32, 32, 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(32))
            h, w = -(-h // 2), -(-w // 2)
        self.blocks = blocks
        self.fc = nn.Linear(32 * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.blocks + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = F.relu(F.max_pool2d(x, 2, ceil_mode=True))
        return self.fc(x.flatten(1))


def _token_ids(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point():
        raise FedsimError(f"model {name} takes int64 token ids (a text dataset: agnews, sent140, an hf: text "
                          f"dataset), got {x.dtype} inputs")


def _embedding(vocabulary, width: int) -> nn.Embedding:
    """The token embedding: from the vocabulary's word vectors when it has them (their width), else random. Padding
    (id 0) is masked in the models' forward (`_embed`), not by `padding_idx`: torch.func.vmap's batching rule of the
    embedding's backward ignores padding_idx, so the vmap executor would train the padding row."""
    vectors = getattr(vocabulary, "vectors", None)
    if vectors is None:
        return nn.Embedding(len(vocabulary), width)
    return nn.Embedding.from_pretrained(torch.as_tensor(vectors, dtype=torch.float32).clone(), freeze=False)


def _embed(embedding: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
    """The embeddings of token ids `x`, zero at padding (id 0)."""
    return embedding(x) * (x != 0).unsqueeze(-1)


class FastText(nn.Module):
    """PFLlib's fastText (Joulin et al., "Bag of Tricks for Efficient Text Classification", EACL 2017): the mean of
    the token embeddings over the sequence (padding embeds as 0 and counts in the mean, as PFLlib's), a Linear
    of the same width, and a Linear to the classes; width 32, PFLlib's AG News setting. An Embedding and two
    Linears, no recurrence: the vmap executor trains it."""

    def __init__(self, vocabulary, num_classes: int, width: int = 32):
        super().__init__()
        self.embedding = _embedding(vocabulary, width)
        width = self.embedding.embedding_dim
        self.fc1 = nn.Linear(width, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _token_ids("fasttext", x)
        return self.fc(self.fc1(_embed(self.embedding, x).mean(1)))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder layer (Vaswani et al. 2017; Xiong et al. 2020's pre-LN order), written with
    plain Linear layers and no dropout so that torch.func.vmap batches it and the vmap executor's Linear updates
    apply: x + attention(LN(x)) over the tokens that are not padding, then x + FF(LN(x))."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ff1 = nn.Linear(width, hidden)
        self.ff2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(~keep[:, None, None, :], -1e9)  # padding is never attended to
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self.proj(attended)
        return x + self.ff2(F.relu(self.ff1(self.norm2(x))))


class TextTransformer(nn.Module):
    """A small transformer encoder for text classification: token embedding + learned position embedding (width 64),
    two pre-norm encoder blocks (4 heads, feed-forward 128), a final LayerNorm, the mean over the tokens that are
    not padding, a Linear to the classes. PFLlib's AG News TransformerModel is of this size; this one has no
    dropout, so the vmap executor trains it (its numbers equal the sequential executor's)."""

    def __init__(self, vocabulary, seq_len: int, num_classes: int, width: int = 64, heads: int = 4,
                 hidden: int = 128, layers: int = 2):
        super().__init__()
        self.embedding = _embedding(vocabulary, width)
        width = self.embedding.embedding_dim
        if width % heads:
            raise FedsimError(f"model transformer: the embedding width {width} is not a multiple of its {heads} heads")
        self.position = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _token_ids("transformer", x)
        keep = x != 0
        h = _embed(self.embedding, x) + self.position.weight[: x.shape[-1]]
        for block in self.blocks:
            h = block(h, keep)
        h = self.norm(h) * keep[..., None]
        return self.fc(h.sum(1) / keep.sum(1, keepdim=True).clamp(min=1))


class Sent140LSTM(nn.Module):
    """LEAF's Sent140 model (models/sent140/stacked_lstm.py): a token embedding of width 100 (LEAF's n_hidden; the
    word vectors' width when given), two LSTM layers of 100, the last step's output through a Linear of 128 (no
    activation, as LEAF's) and a Linear to the classes. Recurrent: it trains on the sequential executor."""

    def __init__(self, vocabulary, num_classes: int, hidden: int = 100, layers: int = 2):
        super().__init__()
        self.embedding = _embedding(vocabulary, hidden)
        self.lstm = nn.LSTM(self.embedding.embedding_dim, hidden, num_layers=layers, batch_first=True)
        self.fc1 = nn.Linear(hidden, 128)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _token_ids("sent140-lstm", x)
        out, _ = self.lstm(_embed(self.embedding, x))
        return self.fc(self.fc1(out[:, -1]))


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


def _femnist_cnn(input_shape, num_classes):
    c, hw = _needs_image("femnist-cnn", input_shape)
    return CNN(c, hw, num_classes, hidden=2048)


def _celeba_cnn(input_shape, num_classes):
    c, hw = _needs_image("celeba-cnn", input_shape)
    return CelebaCNN(c, hw, num_classes)


def _needs_text(name: str, input_shape: tuple[int, ...], vocabulary) -> int:
    if len(input_shape) != 1 or vocabulary is None:
        raise FedsimError(f"model {name} takes the token ids of a text dataset (agnews, sent140, an hf: dataset with "
                          f"a text column), not samples of shape {tuple(input_shape)}")
    return input_shape[0]


def _fasttext(input_shape, num_classes, vocabulary=None):
    _needs_text("fasttext", input_shape, vocabulary)
    return FastText(vocabulary, num_classes)


def _transformer(input_shape, num_classes, vocabulary=None):
    return TextTransformer(vocabulary, _needs_text("transformer", input_shape, vocabulary), num_classes)


def _sent140_lstm(input_shape, num_classes, vocabulary=None):
    _needs_text("sent140-lstm", input_shape, vocabulary)
    return Sent140LSTM(vocabulary, num_classes)


# name -> (builder(input_shape, num_classes) -> nn.Module, one-line description); TEXT_MODELS' builders also take
# the dataset's vocabulary
TEXT_MODELS = ("fasttext", "transformer", "sent140-lstm")
BUILTINS = {
    "mlp": (_mlp, "McMahan 2NN: flatten -> 200 -> 200 -> classes (images or vectors)"),
    "cnn": (_cnn, "McMahan CNN, 'same' padding: conv32 -> conv64 -> FC512 -> classes"),
    "cnn-bn": (_cnn_bn, "the cnn with BatchNorm2d after each conv"),
    "fedavgcnn": (_fedavgcnn, "PFLlib FedAvgCNN, valid padding: conv32 -> conv64 -> FC512 -> classes"),
    "lenet5": (_lenet5, "NIID-Bench simple-cnn (LeNet-5): conv6 -> conv16 -> 120 -> 84 -> classes"),
    "logreg": (_logreg, "multinomial logistic regression: flatten -> Linear(D -> classes)"),
    "char-lstm": (_char_lstm, "LEAF's Shakespeare model: embedding 8 -> LSTM 256 -> LSTM 256 -> next character"),
    "femnist-cnn": (_femnist_cnn, "LEAF's FEMNIST CNN: conv32 -> conv64 ('same', 5x5) -> FC2048 -> classes"),
    "celeba-cnn": (_celeba_cnn, "LEAF's CelebA CNN: 4 x (conv32 3x3 -> BN -> maxpool -> ReLU) -> classes"),
    "fasttext": (_fasttext, "PFLlib's fastText: mean of token embeddings (32) -> FC32 -> classes"),
    "transformer": (_transformer, "small transformer encoder: embedding 64 -> 2 pre-norm blocks (4 heads) -> mean -> "
                                  "classes"),
    "sent140-lstm": (_sent140_lstm, "LEAF's Sent140 model: embedding 100 -> LSTM 100 -> LSTM 100 -> FC128 -> "
                                    "classes"),
}


def build_builtin(name: str, input_shape: tuple[int, ...], num_classes: int, vocabulary=None) -> nn.Module:
    """Built-in `name`; `vocabulary` (a text dataset's: its len() is the token count, `vectors` optional word
    vectors) sizes the text models' embedding."""
    builder, _ = BUILTINS[name]
    if name in TEXT_MODELS:
        return builder(input_shape, num_classes, vocabulary)
    return builder(input_shape, num_classes)

"""Text classification: the tokenizer and the keyed vocabulary, AG News' CSV files, word vectors, and the text
models (fastText and the transformer train on the vmap executor with the sequential executor's numbers)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.core.hooks import ClientJob, Phase
from fedsim.core.state import model_state
from fedsim.data.datasets import load_dataset
from fedsim.data.text import build_vocabulary, text_dataset, tokenize
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.vmap import VmapExecutor, vmap_unsupported_reason
from fedsim.models import build_model

runner = CliRunner()
WORDS = "the markets rose stocks fell team won match lost election vote science space rocket".split()


def write_agnews(root, train=40, test=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "ag_news_csv"
    folder.mkdir(parents=True)
    for split, n in (("train", train), ("test", test)):
        rows = []
        for i in range(n):
            label = i % 4 + 1
            words = " ".join(rng.choice(WORDS[3 * (label - 1): 3 * label + 2], 6))
            rows.append(f'"{label}","Title {i}","{words}, said \\"someone\\"."')
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_tokenizer_and_vocabulary_are_a_function_of_the_training_texts():
    assert tokenize("Don't stop, GO now!") == ["don't", "stop", ",", "go", "now", "!"]
    assert tokenize(None) == []  # a missing text (None in a Hugging Face column) is all padding
    texts = [["b", "a", "c"], ["a", "b"], ["d"]]  # a and b twice (a tie: alphabetical), then c, d once
    vocab = build_vocabulary(texts, 5)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c"]
    assert build_vocabulary(list(reversed(texts)), 5).sha256() == vocab.sha256()  # the order of texts is no key
    ids = vocab.encode([["a", "z", "c", "b"], ["b"]], 3)
    assert ids.tolist() == [[2, 1, 4], [3, 0, 0]]  # cut to 3; unknown 1; padded with 0 at the end


def test_agnews_reads_its_csv_files(tmp_path):
    data = load_dataset("agnews", write_agnews(tmp_path), seq_len=12, vocab_size=30)
    assert data.x_train.shape == (40, 12) and data.x_train.dtype == torch.int64
    assert data.num_classes == 4 and sorted(set(data.y_train.tolist())) == [0, 1, 2, 3]
    assert len(data.vocabulary) <= 30 and data.info["vocabulary"]["size"] == len(data.vocabulary)
    again = load_dataset("agnews", tmp_path, seq_len=12, vocab_size=30)
    assert again.fingerprint() == data.fingerprint()  # the same files, the same ids


def test_word_vectors_start_the_embedding(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("markets 1 2 3 4\nspace -1 0 1 0.5\nunrelated 9 9 9 9\n")
    data = load_dataset("agnews", write_agnews(tmp_path / "d"), vocab_size=50, embeddings=str(glove))
    vocab = data.vocabulary
    assert vocab.embeddings["found"] == 2 and vocab.embeddings["dim"] == 4
    model = build_model("fasttext", data.input_shape, data.num_classes, vocabulary=vocab)
    weight = model.embedding.weight
    assert weight.shape == (len(vocab), 4) and weight.requires_grad
    assert torch.equal(weight[vocab.ids()["markets"]], torch.tensor([1.0, 2, 3, 4]))
    assert torch.equal(weight[0], torch.zeros(4))  # padding


def _text_data(n=36, length=9, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (n, length), generator=g)
    x[::3, 6:] = 0  # padded texts
    y = torch.randint(0, 3, (n,), generator=g)
    sizes = [5, 9, 12, 10]
    return ClientData(x, y, torch.randperm(n, generator=g), np.concatenate([[0], np.cumsum(sizes)])), vocab


class _Vocab:
    vectors = None

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.parametrize("name", ["fasttext", "transformer"])
def test_text_models_train_under_vmap_as_sequentially(name):
    data, vocab = _text_data()
    torch.manual_seed(0)
    model = build_model(name, (9,), 3, vocabulary=_Vocab(vocab))
    assert vmap_unsupported_reason(model) is None
    spec = LocalSpec(OptimizerSpec("sgd", 0.1), batch_size=4, epochs=2)
    start = model_state(model)

    def jobs():
        return [ClientJob(c, {k: v.clone() for k, v in start.items()}, {}) for c in range(4)]

    seq = SequentialExecutor(model, data, spec).train([Phase()], jobs(), 1, 0.1)
    vec = VmapExecutor(model, data, spec).train([Phase()], jobs(), 1, 0.1)
    for a, b in zip(seq, vec, strict=True):
        for k in a.states[-1]:
            diff = (a.states[-1][k] - b.states[-1][k]).abs().max() / a.states[-1][k].abs().max().clamp_min(1e-12)
            assert diff < 1e-5, (name, k, float(diff))


def test_sent140_lstm_falls_back_to_sequential_and_says_why():
    model = build_model("sent140-lstm", (25,), 2, vocabulary=_Vocab(50))
    assert "recurrent layer (lstm: LSTM)" in vmap_unsupported_reason(model)


def test_text_models_refuse_data_without_a_vocabulary():
    from fedsim.errors import FedsimError

    with pytest.raises(FedsimError, match="token ids of a text dataset"):
        build_model("fasttext", (1, 8, 8), 10)


def test_cli_trains_fasttext_on_agnews_and_writes_the_vocabulary(tmp_path):
    write_agnews(tmp_path / "data")
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--dataset", "agnews", "--data-dir", str(tmp_path / "data"), "--model",
                                 "fasttext", "--clients", "4", "--rounds", "2", "--lr", "0.5", "--seq-len", "16",
                                 "--vocab-size", "64", "--out-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "agnews-fedavg-fasttext-seed0.json").read_text())
    assert record["executor"]["name"] == "vmap"
    vocab = record["dataset"]["vocabulary"]
    assert vocab["size"] <= 64 and record["dataset"]["seq_len"] == 16
    tokens = (out / vocab["file"]).read_text().splitlines()
    assert tokens[:2] == ["<pad>", "<unk>"] and len(tokens) == vocab["size"]


def test_text_options_are_refused_for_image_data(tmp_path):
    result = runner.invoke(app, ["train", "--seq-len", "10", "--rounds", "1", "--out-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "seq_len apply only to text datasets" in result.output
    assert result.output.count("\n") == 1


def test_an_empty_split_is_one_line():
    from fedsim.errors import FedsimError

    with pytest.raises(FedsimError, match="the test split is empty"):
        text_dataset("t", ["a b"], [0], [], [], num_classes=2)

"""Options shared by `fedsim partition` and `fedsim train`: same names, defaults and help everywhere.

Each alias is `Annotated[type, typer.Option(...)]`; use it as a parameter's annotation and give the
default in the signature, which must equal the `fedsim.config.Config` field of the same name (option
`--min-size` is field `min_size`). Only typer is imported here, so `--help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

DATA = "Data"
PARTITION = "Partition (choose one scheme; default --iid)"

# Kept as text, not read from fedsim.data.datasets (that imports numpy, which --help must not);
# tests/test_cli_partition.py checks that every registered dataset is named here.
DATASET_HELP = ("Dataset: digits (built in, no files), mnist, fashion-mnist, emnist, cifar10, cifar100, "
                "synthetic, synthetic(ALPHA,BETA), synthetic-iid (FedProx's), shakespeare (LEAF's next "
                "character), femnist, celeba, sent140 (LEAF's JSON files), agnews (text: its CSV files), "
                "hf:NAME[:CONFIG] (a Hugging Face dataset: a Hub name, a save_to_disk folder, parquet/arrow/csv "
                "files; pip install -e '.\\[hf]'), a folder of images or an .npz file. synthetic, shakespeare and "
                "LEAF's have a --natural split.")

DatasetOpt = Annotated[str, typer.Option("--dataset", help=DATASET_HELP, rich_help_panel=DATA)]
DataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", metavar="DIR", show_default=False, rich_help_panel=DATA,
    help="Folder holding the dataset files (default: $FEDSIM_DATA, else ./data).")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download", rich_help_panel=DATA,
    help="Let torchvision fetch missing dataset files (needs the network).")]

ClientsOpt = Annotated[int | None, typer.Option(
    "--clients", metavar="N", show_default=False, rich_help_panel=PARTITION,
    help="Number of clients (default: 10; for a dataset with its own devices, as synthetic, their number).")]
IidOpt = Annotated[bool, typer.Option(
    "--iid", rich_help_panel=PARTITION,
    help="IID: shuffle, then split equally (the default when no scheme is given).")]
DirichletOpt = Annotated[float | None, typer.Option(
    "--dirichlet", metavar="ALPHA", show_default=False, rich_help_panel=PARTITION,
    help="Label skew (NIID-Bench): per class, client proportions ~ Dir(ALPHA); smaller = more skewed "
         "(0.1 strong, 0.5 usual, 100 near IID).")]
ShardsOpt = Annotated[int | None, typer.Option(
    "--shards", metavar="S", show_default=False, rich_help_panel=PARTITION,
    help="Pathological non-IID (McMahan et al.): sort by label, cut into clients*S shards, S per client.")]
LabelsOpt = Annotated[int | None, typer.Option(
    "--labels", metavar="K", show_default=False, rich_help_panel=PARTITION,
    help="#C=K (NIID-Bench): each client holds K distinct labels, split equally among their holders.")]
QuantitySkewOpt = Annotated[float | None, typer.Option(
    "--quantity-skew", metavar="BETA", show_default=False, rich_help_panel=PARTITION,
    help="Quantity skew (NIID-Bench): client sizes ~ Dir(BETA), labels IID; smaller = more unequal.")]
NaturalOpt = Annotated[bool, typer.Option(
    "--natural", rich_help_panel=PARTITION,
    help="The dataset's own per-device split (synthetic, shakespeare); the number of clients is the dataset's.")]
MinSizeOpt = Annotated[int, typer.Option(
    "--min-size", metavar="M", rich_help_panel=PARTITION,
    help="--dirichlet / --quantity-skew: redraw (at most 100 times) until every client has >= M samples.")]
ClientTestFractionOpt = Annotated[float | None, typer.Option(
    "--client-test-fraction", metavar="F", show_default=False, rich_help_panel=PARTITION,
    help="Hold out F of each client's own samples as its test slice (PFLlib style). Default: share out "
         "the test split so each client's test labels follow its train labels.")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="SEED", help="Random seed (the partition's, and the run's in fedsim train).")]
PartitionSeedOpt = Annotated[int | None, typer.Option(
    "--partition-seed", metavar="SEED", show_default=False, rich_help_panel=PARTITION,
    help="Seed of the partition when it should differ from --seed (default: --seed).")]

# How the data is read: `fedsim train` and `fedsim partition` (so a partition is made of the data a run trains on)
HF = "Hugging Face datasets (--dataset hf:NAME)"
NormalizeOpt = Annotated[str | None, typer.Option(
    "--normalize", rich_help_panel=DATA,
    help="Pixel scaling of digits and the image datasets: standard (per-channel mean/std), symmetric ([-1, 1], "
         "PFLlib), unit ([0, 1], McMahan et al.). Default: standard (digits: symmetric).")]
ImageSizeOpt = Annotated[str | None, typer.Option(
    "--image-size", metavar="H[,W]", rich_help_panel=DATA,
    help="A folder of images, celeba or an hf: image dataset: resize every image to H x W (needed when their sizes "
         "differ).")]
TestFractionOpt = Annotated[float | None, typer.Option(
    "--test-fraction", metavar="F", rich_help_panel=DATA,
    help="A folder of images with only class folders, or an hf: dataset with one split: hold out F of each class "
         "as the test split (default 0.2).")]
SeqLenOpt = Annotated[int | None, typer.Option(
    "--seq-len", metavar="L", show_default=False, rich_help_panel=DATA,
    help="Text: tokens per text, cut or padded (default 200, PFLlib's AG News; sent140: 25, LEAF's).")]
VocabSizeOpt = Annotated[int | None, typer.Option(
    "--vocab-size", metavar="K", show_default=False, rich_help_panel=DATA,
    help="Text: keep the K most frequent tokens of the training split, padding and unknown included (default "
         "20000); written beside the run as <name>.vocab.txt.")]
EmbeddingsOpt = Annotated[str | None, typer.Option(
    "--embeddings", metavar="FILE", show_default=False, rich_help_panel=DATA,
    help="Text: word vectors in GloVe's text format (glove.6B.300d.txt); the text models' embedding starts from "
         "them (default: random).")]
HfImageColumnOpt = Annotated[str | None, typer.Option(
    "--hf-image-column", metavar="COLUMN", show_default=False, rich_help_panel=HF,
    help="The input images (default: the one Image feature).")]
HfTextColumnOpt = Annotated[str | None, typer.Option(
    "--hf-text-column", metavar="COLUMN", show_default=False, rich_help_panel=HF,
    help="The input texts instead (default: the one string column, or one named text, sentence or content).")]
HfLabelColumnOpt = Annotated[str | None, typer.Option(
    "--hf-label-column", metavar="COLUMN", show_default=False, rich_help_panel=HF,
    help="The labels, a ClassLabel or integers (default: the one ClassLabel, else label or labels).")]
HfClientColumnOpt = Annotated[str | None, typer.Option(
    "--hf-client-column", metavar="COLUMN", show_default=False, rich_help_panel=HF,
    help="One client per distinct value of this column (writer, user, speaker): the --natural split.")]
HfTrainSplitOpt = Annotated[str | None, typer.Option(
    "--hf-train-split", metavar="SPLIT", show_default=False, rich_help_panel=HF,
    help="The training split (default: train).")]
HfTestSplitOpt = Annotated[str | None, typer.Option(
    "--hf-test-split", metavar="SPLIT", show_default=False, rich_help_panel=HF,
    help="The test split (default: test, else validation, else --test-fraction of the training split).")]

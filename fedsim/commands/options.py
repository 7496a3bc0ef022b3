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
                "character); the last four have a --natural split.")

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

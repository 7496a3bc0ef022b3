"""`fedsim partition`: split a dataset among clients, show per-client label counts, save the file.

numpy, matplotlib and the dataset load inside the command body, so `fedsim partition --help` stays fast.
`print_partition` and `plot_label_heatmap` are also meant for `fedsim train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedsim.commands import user_errors
from fedsim.commands.options import (
    ClientsOpt,
    ClientTestFractionOpt,
    DataDirOpt,
    DatasetOpt,
    DirichletOpt,
    DownloadOpt,
    EmbeddingsOpt,
    HfClientColumnOpt,
    HfImageColumnOpt,
    HfLabelColumnOpt,
    HfTestSplitOpt,
    HfTextColumnOpt,
    HfTrainSplitOpt,
    IidOpt,
    ImageSizeOpt,
    LabelsOpt,
    MinSizeOpt,
    NaturalOpt,
    NormalizeOpt,
    QuantitySkewOpt,
    SeedOpt,
    SeqLenOpt,
    ShardsOpt,
    TestFractionOpt,
    VocabSizeOpt,
)
from fedsim.files import write_atomically

OUTPUT = "Output"
MAX_LABEL_COLUMNS = 12   # more classes than this: one compact "largest label counts" column
MAX_PLOT_CLIENTS = 100   # the heatmap shows at most this many clients (the first ones)


def partition(
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    clients: ClientsOpt = None,
    iid: IidOpt = False,
    dirichlet: DirichletOpt = None,
    shards: ShardsOpt = None,
    labels: LabelsOpt = None,
    quantity_skew: QuantitySkewOpt = None,
    natural: NaturalOpt = False,
    min_size: MinSizeOpt = 10,
    client_test_fraction: ClientTestFractionOpt = None,
    seed: SeedOpt = 0,
    normalize: NormalizeOpt = None,
    image_size: ImageSizeOpt = None,
    test_fraction: TestFractionOpt = None,
    seq_len: SeqLenOpt = None,
    vocab_size: VocabSizeOpt = None,
    embeddings: EmbeddingsOpt = None,
    hf_image_column: HfImageColumnOpt = None,
    hf_text_column: HfTextColumnOpt = None,
    hf_label_column: HfLabelColumnOpt = None,
    hf_client_column: HfClientColumnOpt = None,
    hf_train_split: HfTrainSplitOpt = None,
    hf_test_split: HfTestSplitOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="PATH", show_default=False, rich_help_panel=OUTPUT,
        help="Where to save the partition (default: results/partitions/<dataset>-<scheme><param>-"
             "<clients>c-seed<seed>.fsp).")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png", show_default=False, rich_help_panel=OUTPUT,
        help="Also draw a client x label heatmap of the sample counts (png, pdf or svg).")] = None,
    show: Annotated[int, typer.Option(
        "--show", metavar="N", rich_help_panel=OUTPUT, help="Clients shown in the table.")] = 20,
    inspect: Annotated[Path | None, typer.Option(
        "--inspect", metavar="FILE", show_default=False, rich_help_panel=OUTPUT,
        help="Show a saved partition file (table, --plot) instead of making one.")] = None,
) -> None:
    """Split a dataset among clients, print per-client label counts, save the partition file.

    Then `fedsim train --partition FILE` trains any algorithm on exactly this split.

    Example: fedsim partition --dataset mnist --clients 100 --dirichlet 0.5 --plot mnist.png
    """
    with user_errors():
        from rich.console import Console

        from fedsim.config import Config
        from fedsim.data.datasets import load_dataset
        from fedsim.data.partition import load_partition
        from fedsim.data.partition_build import (
            DEFAULT_CLIENTS,
            build_partition,
            check_client_test_fraction,
            default_partition_path,
            scheme_for,
        )
        from fedsim.data.partitioners import make_partitioner
        from fedsim.errors import FedsimError

        if show < 0:
            raise FedsimError(f"--show must be 0 or more, got {show}")
        if plot is not None:
            _check_plot_path(plot)
        console = Console(highlight=False, soft_wrap=True)  # long paths stay whole, for copying
        # the data is read as `fedsim train` reads it, so the partition is made of (and checks) the data a run trains on
        cfg = Config(dataset=dataset, data_dir=data_dir, download=download, clients=clients, iid=iid,
                     dirichlet=dirichlet, shards=shards, labels=labels, quantity_skew=quantity_skew,
                     natural=natural, min_size=min_size, client_test_fraction=client_test_fraction, seed=seed,
                     normalize=normalize, image_size=image_size, test_fraction=test_fraction, seq_len=seq_len,
                     vocab_size=vocab_size, embeddings=embeddings, hf_image_column=hf_image_column,
                     hf_text_column=hf_text_column, hf_label_column=hf_label_column,
                     hf_client_column=hf_client_column, hf_train_split=hf_train_split, hf_test_split=hf_test_split)
        if inspect is not None:
            part = load_partition(inspect)
            # devices: a generated dataset (synthetic) has as many devices as the partition has clients
            data = load_dataset(part.meta["dataset"], data_dir, device="cpu", download=download,
                                **{**cfg.dataset_options(), "devices": part.num_clients})
            part.check_matches(data)
            path = None
        else:
            scheme, param = cfg.scheme
            if scheme != "natural":  # the argument checks, before spending time on the data
                make_partitioner(scheme, DEFAULT_CLIENTS if clients is None else clients, seed, param, min_size)
            if client_test_fraction is not None:
                check_client_test_fraction(client_test_fraction)
            # --clients also sets how many devices a generated dataset (synthetic) has, as in fedsim train
            data = load_dataset(dataset, data_dir, device="cpu", download=download, **cfg.dataset_options())
            scheme, param = scheme_for(cfg, data)  # a dataset with its own devices defaults to natural
            part = build_partition(data, scheme, clients, seed, param, min_size, client_test_fraction)
            path = out if out is not None else default_partition_path(
                data.name, scheme, part.num_clients, seed, param, min_size, client_test_fraction)
            part.save(path)
        print_partition(console, part, data, show)
        if plot is not None:
            plot_label_heatmap(part, data, plot)
            console.print(f"saved heatmap to {plot}")
        if path is not None:
            console.print(f"saved partition to {path} (use: fedsim train --partition {path})")


def describe(part) -> str:
    """e.g. 'mnist, dirichlet alpha=0.5 min_size=10, 100 clients, seed 0'."""
    m = part.meta
    words = [m["scheme"]]
    for k, v in m["params"].items():
        value = f"{v:g}" if isinstance(v, float) else str(v)
        if k == m["scheme"]:  # shards=2, labels=2
            words[0] += f"={value}"
        else:
            words.append(f"{k}={value}")
    scheme = " ".join(words)
    return f"{m['dataset']}, {scheme}, {part.num_clients} clients, seed {m['seed']}"


def print_partition(console, part, data, show: int = 20) -> None:
    """The per-client table (first `show` clients) and the summary lines below it."""
    from rich.table import Table

    from fedsim.data.partition_stats import label_counts, partition_stats

    counts = label_counts(part, data, "train")
    n, num_classes = counts.shape
    test_sizes = part.test_sizes
    rows = min(show, n)
    if rows == 0:
        console.print(describe(part))
    table = Table(title=describe(part), title_justify="left", box=None, pad_edge=False,
                  header_style="bold", caption_justify="left",
                  caption=f"... {n - rows} more clients (--show N for more rows)" if rows < n else None)
    table.add_column("client", justify="right")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    wide = num_classes <= MAX_LABEL_COLUMNS
    if wide:
        for k in range(num_classes):
            table.add_column(str(k), justify="right")
    else:
        table.add_column("labels", justify="right")
        table.add_column("largest label counts (label:count)")
    for c in range(rows):
        row = counts[c]
        cells = [str(c), str(int(row.sum())), str(int(test_sizes[c]))]
        if wide:
            cells += [str(int(v)) if v else "[dim]·[/]" for v in row]
        else:
            held = row.nonzero()[0]
            top = held[(-row[held]).argsort(kind="stable")][:5]
            more = f" [dim]+{len(held) - len(top)}[/]" if len(held) > len(top) else ""
            cells += [str(len(held)), " ".join(f"{k}:{row[k]}" for k in top) + more]
        table.add_row(*cells)
    if rows:
        console.print(table)

    s = partition_stats(counts)
    if part.meta.get("client_test_source") == "train":
        test_note = f"held out from each client's own samples, fraction {part.meta['client_test_fraction']:g}"
    elif part.meta.get("scheme") == "natural":
        test_note = "the dataset's own per-device test split"
    else:
        test_note = "each client's share of the test split, following its train label mix"
    median = f"{s['median_size']:g}"
    console.print(f"clients: {n}, train samples: {s['samples']}, test samples: {int(test_sizes.sum())}")
    console.print(f"  client test slices: {test_note}")
    console.print(f"client train size: min {s['min_size']} / median {median} / max {s['max_size']}"
                  + (f" ({s['empty_clients']} clients have no samples)" if s["empty_clients"] else ""))
    console.print(f"labels per client: mean {s['mean_labels']:.2f} / min {s['min_labels']} "
                  f"/ max {s['max_labels']} (of {num_classes} classes)")
    console.print(f"label skew: {s['mean_tv']:.3f} = mean total-variation distance of a client's label mix "
                  f"to the global mix (0 = same mix, 1 = disjoint)")


def _check_plot_path(plot: Path) -> None:
    from fedsim.errors import FedsimError

    if plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise FedsimError(f"--plot {plot}: give a file name ending in .png, .pdf or .svg")
    if plot.is_dir():
        raise FedsimError(f"--plot {plot} is a directory; give a file name ending in .png")


def plot_label_heatmap(part, data, path: str | Path) -> Path:
    """A client x label heatmap of train sample counts (first MAX_PLOT_CLIENTS clients) with sizes above."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    from fedsim.data.partition import make_parent_folder
    from fedsim.data.partition_stats import label_counts

    path = Path(path)
    counts = label_counts(part, data, "train")
    n, num_classes = counts.shape
    shown = counts[:MAX_PLOT_CLIENTS].T  # labels x clients
    m = shown.shape[1]
    annotate = m <= 30 and num_classes <= 20  # numbers in the cells
    width = min(max(6.0, 2.5 + (0.3 if annotate else 0.13) * m), 16.0)
    height = min(max(4.0, 2.2 + 0.28 * num_classes), 14.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax_bar, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 3.5])
    clients = np.arange(m)
    ax_bar.bar(clients, shown.sum(axis=0), width=0.85, color="#4c72b0")
    ax_bar.set_ylabel("train\nsamples")
    ax_bar.grid(axis="y", alpha=0.3)
    # a label the client does not hold is blank ("bad" = masked), so small counts still show
    cmap = LinearSegmentedColormap.from_list("counts", ["#deebf7", "#6baed6", "#2171b5", "#08306b"]) \
        .with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_equal(shown, 0), aspect="auto", cmap=cmap, interpolation="nearest",
                      vmin=0, vmax=max(int(shown.max()), 1),
                      extent=(-0.5, m - 0.5, num_classes - 0.5, -0.5))
    if annotate:
        top = max(int(shown.max()), 1)
        for k in range(num_classes):
            for c in range(m):
                if shown[k, c]:
                    ax.text(c, k, str(shown[k, c]), ha="center", va="center", fontsize=7,
                            color="white" if shown[k, c] > 0.55 * top else "black")
    ax.set_xlabel(f"client{'' if m == n else f' (first {m} of {n})'}")
    ax.set_ylabel("label")
    ax.set_yticks(range(num_classes) if num_classes <= 20 else range(0, num_classes, 10))
    step = 1 if m <= 30 else (5 if m <= 60 else 10)
    ax.set_xticks(range(0, m, step))
    ax.set_xlim(-0.5, m - 0.5)
    fig.colorbar(image, ax=[ax_bar, ax], label="train samples of the label", shrink=0.8, aspect=30)
    fig.suptitle(f"Train samples per client and label: {describe(part)}", fontsize=11)
    make_parent_folder(path, "--plot")
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower()), "--plot")
    return path

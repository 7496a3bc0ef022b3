"""The per-round CSV (whole rows, flushed each round) and the run record beside it.

Columns, one row per evaluated round (accuracies are fractions in [0, 1]):

    round                    1-based round number just finished
    clients                  clients trained this round (the cohort size)
    train_loss               mean local training loss over this round's cohort (sample-weighted)
    test_loss, test_accuracy global model on the dataset's whole test split
    personal_accuracy_mean   each client's own model (global model for FedAvg/FedProx) on its own test
                             slice, over ALL clients, mean of per-client accuracies (each client counts once)
    personal_accuracy_std    standard deviation of those per-client accuracies
    personal_accuracy_min    the worst client
    personal_accuracy_p10    10th percentile over clients (the worst-10% boundary)
    personal_accuracy_pooled correct / total over all clients' test slices (PFLlib/FedProx style)
    bytes_up, bytes_down     exact bytes sent client->server and server->client this round
    round_seconds            wall time of this round (training + evaluation)
    elapsed_seconds          wall time since the run started (setup excluded)
"""

from __future__ import annotations

CSV_COLUMNS = [
    "round",
    "clients",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "personal_accuracy_mean",
    "personal_accuracy_std",
    "personal_accuracy_min",
    "personal_accuracy_p10",
    "personal_accuracy_pooled",
    "bytes_up",
    "bytes_down",
    "round_seconds",
    "elapsed_seconds",
]
TIME_COLUMNS = ("round_seconds", "elapsed_seconds")

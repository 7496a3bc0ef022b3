"""Your own model, federated: a small CNN with BatchNorm trained with FedProx on 10 non-IID clients.

    python examples/own_model.py

Any nn.Module works (its initial weights are the run's initial model; fedsim trains a copy), and so does a
factory `f(input_shape, num_classes) -> nn.Module`. Its last nn.Linear is the head that personalized
algorithms (fedper, fedrep, ...) keep per client; name another with `head=`.
"""

import torch
from torch import nn

import fedsim


class MyCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


if __name__ == "__main__":
    torch.manual_seed(0)
    config = fedsim.Config(dataset="digits", algo="fedprox", mu=0.01, clients=10, dirichlet=0.5, rounds=20,
                           lr=0.05, out_dir="results/examples", name="own-model-fedprox", overwrite=True)
    df = fedsim.run(config, model=MyCNN())
    print(df[["round", "train_loss", "test_accuracy", "personal_accuracy_mean"]].tail(5).to_string(index=False))

"""Shared test setup."""

import torch

# The suite's models are tiny: one thread avoids oversubscribing the 2-core CI machine.
torch.set_num_threads(1)

"""Shared pytest configuration: the swarmfl test kit, and one torch thread for stable runs."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

pytest_plugins = ["swarmfl.testing"]

"""Shared fixtures: the devices to test on (CPU, plus CUDA when present)."""

import pytest
import torch

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test using it runs on CPU, and on CUDA when torch sees a GPU."""
    return request.param

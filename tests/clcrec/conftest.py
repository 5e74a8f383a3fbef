"""Shared fixtures: a small synthetic dataset and a real negative cache built from it."""

from pathlib import Path

import pytest

from cache.build import build_generation
from cache.store import NegativeConfig
from pipeline.synthetic import SynthConfig, write_synthetic
from tests.support import NUM_NEG


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny"
    write_synthetic(path, SynthConfig(scale="tiny", seed=0))
    return path


@pytest.fixture(scope="session")
def tiny_cache(tiny_dataset, tmp_path_factory) -> Path:
    """Generation 0 with small chunks, so an epoch spans several chunks and a ragged tail."""
    cache = tmp_path_factory.mktemp("cache") / "neg"
    build_generation(tiny_dataset, cache, 0, NegativeConfig(num_neg=NUM_NEG, seed=0, chunk_rows=700), progress=False)
    return cache

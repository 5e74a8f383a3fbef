"""Suite-wide collection rule: a test that skips without CUDA carries the `cuda` marker, which is
how scripts/gpu_check.sh selects the CUDA tests (`pytest -m cuda`; `-k cuda` misses some)."""

import pytest


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if any("CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
                and not item.get_closest_marker("cuda")]
    if unmarked:
        raise pytest.UsageError("tests that need CUDA but lack @pytest.mark.cuda (gpu_check.sh would not run them): "
                                + ", ".join(unmarked))

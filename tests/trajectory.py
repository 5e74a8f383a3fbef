"""Bounds on trajectory-dependent figures: what a short training run reaches.

Training is deterministic on one machine but not across CPUs: torch's ATen kernels, MKL/oneDNN and
numba's compiled kernels choose their vector width by CPU, so sums are taken in another order and
the rounding differences grow over an epoch into other weights and other rankings. A bound read off
one machine is therefore not a bound. Each figure's bound here is derived by
`scripts/derive_bounds.py` from runs over several seeds *and* several kernel targets
(`ATEN_CPU_CAPABILITY`, `NUMBA_CPU_NAME`), set a stated margin below the worst run, and kept with
the measurements behind it in `trajectory_bounds.json`. The tests that assert such bounds carry
the `trajectory` marker; `.ci/run` runs them a second time under the portable settings
(`ATEN_CPU_CAPABILITY=default NUMBA_CPU_NAME=generic`).

After a change of training defaults, re-derive every bound with one command:
    python scripts/derive_bounds.py --write
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

BOUNDS_FILE = Path(__file__).with_name("trajectory_bounds.json")
REDERIVE = "python scripts/derive_bounds.py --write"


def load_bounds() -> dict:
    return json.loads(BOUNDS_FILE.read_text())


def assert_within_bounds(case: str, figures: dict[str, float]) -> None:
    """Every figure of `case` is at least its derived bound; the message names the figures that are
    not, the worst run measured when the bound was derived, and how to re-derive."""
    entry = load_bounds()["cases"][case]
    missing = sorted(set(entry["bounds"]) - set(figures))
    assert not missing, f"{case}: figures {missing} were not measured"
    failed = [f"{name} = {figures[name]:.4f} < bound {bound:.4f} (worst measured {entry['worst'][name]:.4f})"
              for name, bound in entry["bounds"].items() if figures[name] < bound]
    assert not failed, (f"{case}: " + "; ".join(failed) + f". Measured figures: {figures}. The bounds in "
                        f"{BOUNDS_FILE.name} came from {entry['measured_on']}; if training defaults changed, "
                        f"re-derive them: {REDERIVE}")


def forced_aten_capability() -> str | None:
    return os.environ.get("ATEN_CPU_CAPABILITY") or None


def skip_compile_under_forced_capability() -> None:
    """torch.compile's C++ code (inductor) does not build under ATEN_CPU_CAPABILITY: it compiles
    the vectorised code for the real CPU against headers told to emulate another one ("at::vec
    has not been declared"). That is an artifact of the emulation, not of any real CPU."""
    cap = forced_aten_capability()
    if cap:
        pytest.skip(f"torch.compile (inductor C++ codegen) fails under ATEN_CPU_CAPABILITY={cap} "
                    "('at::vec has not been declared'): an artifact of emulating a CPU, not of a real one")

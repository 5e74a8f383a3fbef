"""CLCRec on the PyTorch side. `from clcrec import load_run` opens a trained run for serving
(clcrec/api.py); it is imported on first use, so `import clcrec.<module>` stays light.

Importing the package first sets one runtime default, before torch loads its OpenMP runtime:
idle OpenMP threads spin only briefly (GOMP_SPINCOUNT=100) before they sleep. libgomp's default
spins for ~300k iterations, and on a machine shared with another busy process the spinning
threads burn the time slices their descheduled peers need: a paper-scale step on 2 cores went
from 20 ms alone to 192 ms beside one other training process (9.6x, 5x the CPU time per step);
with the short spin it takes 20 ms alone and 28 ms shared (1.4x), and fully passive waiting
(OMP_WAIT_POLICY=PASSIVE) cost 12% alone. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "100")


def __getattr__(name: str):
    if name in ("load_run", "Run"):
        from clcrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'clcrec' has no attribute {name!r}")

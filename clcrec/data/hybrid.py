"""Counter-based hybrid draws: which U-I slots use an item's content representation.

Slot k of the row at epoch position p uses a 32-bit hash of (epoch key, p, k), computed with int64
tensor ops that give the same bits on every device. So the mask needs no generator state (a CUDA
graph can replay it), CPU and CUDA runs draw the same masks, a resumed epoch replays them, and a
rank computes exactly its rows of the global batch. The stream draws them per chunk on the host
(`hybrid_mask_np`, compiled, the same bits) and ships them with the chunk; the step draws them
itself (`hybrid_mask`) only for batches without them (bench's reference loop). Reads and writes
nothing on disk.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

M32 = 0xFFFFFFFF



def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (split c in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply, "lowbias32") on int64 tensors in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def epoch_key(seed: int, epoch: int) -> int:
    """The epoch's 32-bit hybrid key, from (seed, epoch) as every other per-epoch stream."""
    return int(np.random.SeedSequence([seed, epoch, 0x4D]).generate_state(1)[0])


def hybrid_hash(key: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) uniform 32-bit hashes of (key, epoch position of each row, slot).
    key: 0-dim int64 in [0, 2^32); rows: (B,) int64 epoch positions."""
    r = mix32((rows & M32) ^ key)  # (B,)
    r = mix32(r ^ ((rows >> 32) & M32))  # positions past 2^32 stay distinct
    slots = torch.arange(width, dtype=torch.int64, device=rows.device) * 0x9E3779B9 & M32  # (width,)
    return mix32(r.unsqueeze(1) ^ slots)  # (B, width)


def slot_rate(num_sample: float, draw: str, slots: int) -> float:
    """The probability that one U-I slot uses the content representation. `bernoulli`: num_sample.
    `with-replacement`, the reference's way: int(slots * num_sample) slot indices of a batch of
    `slots` slots drawn with replacement leave a slot untouched with probability
    (1 - 1/slots)^draws, so about 1 - exp(-num_sample) of the slots are replaced (39% at 0.5).
    Here each slot is drawn independently at that rate: the reference's marginal rate, with the
    counter hash's properties (no generator state, rank- and device-independent)."""
    if draw == "bernoulli" or slots <= 0:
        return num_sample
    return 1.0 - (1.0 - 1.0 / slots) ** int(slots * num_sample)


def hybrid_threshold(num_sample: float) -> int:
    return int(round(num_sample * 2**32))  # h < 2^32 always: num_sample 1 takes every slot


def hybrid_mask(key: torch.Tensor, rows: torch.Tensor, width: int, num_sample: float) -> torch.Tensor:
    """(B, width) bool: Bernoulli(num_sample) per slot, from the counter hash (no generator state)."""
    return hybrid_hash(key, rows, width) < hybrid_threshold(num_sample)


# The same hash as one compiled pass for the CPU producer thread: serial and GIL-free, so it never
# competes with torch's thread pool, and about 10x cheaper than the same arithmetic in numpy.
@numba.njit(nogil=True, cache=True)
def _mix32_nb(x):  # pragma: no cover - compiled
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    return x ^ (x >> np.uint64(16))


@numba.njit(nogil=True, cache=True)
def _hybrid_rows(key, rows, width, threshold, out):  # pragma: no cover - compiled
    m = np.uint64(M32)
    for i in range(rows.shape[0]):
        p = np.uint64(rows[i])
        r = _mix32_nb((p & m) ^ key)
        r = _mix32_nb(r ^ ((p >> np.uint64(32)) & m))
        for k in range(width):
            out[i, k] = _mix32_nb(r ^ ((np.uint64(k) * np.uint64(0x9E3779B9)) & m)) < threshold


def hybrid_mask_np(key: int, rows: np.ndarray, width: int, num_sample: float) -> np.ndarray:
    """`hybrid_mask` on the host: the same bits (tested). rows: (B,) int64 epoch positions."""
    out = np.empty((len(rows), width), dtype=np.bool_)
    _hybrid_rows(np.uint64(key), np.ascontiguousarray(rows, dtype=np.int64), width,
                 np.uint64(hybrid_threshold(num_sample)), out)
    return out

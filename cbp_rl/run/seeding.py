"""Seed derivation: the one way a run's seed becomes the seeds of its random streams.

Every random stream of a run (its environments, action noise, minibatch order, network init, the
CBP and ReDo draws, ...) gets its own seed from the run seed, so streams never share draws and
adding one changes none of the others. Both forms go through ``np.random.SeedSequence``:

* a named purpose (``"env"``, ``"actions"``, ``"env@4096"``: any string) mixes the first 32 bits of
  the name's SHA-256 into the entropy and gives a 31-bit seed (what gymnasium and every torch
  generator take); the RL agents use these;
* a numbered stream (an index into a fixed list of names, such as
  :data:`cbp_rl.supervised.stream.STREAMS`) is the sequence's spawn key and gives a 63-bit seed;
  the batched supervised engines use these, so seed ``s`` of a batched run draws exactly what a
  single run with seed ``s`` draws.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, purpose: str | int) -> int:
    """An independent seed for one random stream of run seed ``seed`` (see the module docstring):
    31 bits for a named ``purpose``, 63 bits for a numbered stream."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
    if isinstance(purpose, str):
        digest = hashlib.sha256(purpose.encode()).digest()
        words = np.random.SeedSequence([seed, int.from_bytes(digest[:4], "little")])
        return int(words.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)
    if isinstance(purpose, bool) or not isinstance(purpose, int) or purpose < 0:
        raise ValueError(f"a stream is a name or a non-negative index, got {purpose!r}")
    state = np.random.SeedSequence(seed, spawn_key=(purpose,)).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))

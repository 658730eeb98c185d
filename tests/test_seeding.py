"""The one seed derivation: pinned values (so a run's streams never change between versions),
independence, and bad input."""

from __future__ import annotations

import pytest

from cbp_rl.run.seeding import derive_seed
from cbp_rl.supervised.stream import STREAMS, stream_seed

# the seeds the RL agents and the pmnist engines drew before the derivation was one function
NAMED = {
    (0, "env"): 1584017365,
    (0, "networks"): 84359035,
    (0, "env@4096"): 1394676793,
    (7, "env"): 636987181,
    (7, "networks"): 1820432223,
    (7, "env@4096"): 1725742509,
}
NUMBERED = {
    (0, "init"): 8069282889424829228,
    (0, "redo"): 4464321566333347331,
    (7, "init"): 2579397289629868333,
    (7, "redo"): 2942168815446374063,
}


def test_named_purposes_give_the_pinned_31_bit_seeds() -> None:
    for (seed, purpose), expected in NAMED.items():
        assert derive_seed(seed, purpose) == expected
    values = {derive_seed(s, p) for s in range(50) for p in ("env", "actions", "updates")}
    assert len(values) == 150 and all(0 <= v < 2**31 for v in values)


def test_numbered_streams_give_the_pinned_63_bit_seeds() -> None:
    for (seed, stream), expected in NUMBERED.items():
        assert stream_seed(seed, stream) == expected == derive_seed(seed, STREAMS.index(stream))
    values = {derive_seed(s, i) for s in range(50) for i in range(len(STREAMS))}
    assert len(values) == 50 * len(STREAMS) and all(0 <= v < 2**63 for v in values)


@pytest.mark.parametrize(("seed", "purpose"), [(-1, "env"), (True, "env"), (1.5, 0), (0, -2)])
def test_bad_seeds_and_streams_are_refused(seed: object, purpose: object) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(seed, purpose)  # type: ignore[arg-type]

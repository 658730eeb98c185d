"""cbp_rl.supervised: online permuted MNIST, its learners and the batched many-seed engine.

* :mod:`~cbp_rl.supervised.data`: MNIST / Fashion-MNIST IDX loader (md5-checked, downloads).
* :mod:`~cbp_rl.supervised.stream`: the permuted task stream, per-seed random streams.
* :mod:`~cbp_rl.supervised.engine`: S seeds of one learner as one stacked network.
* :mod:`~cbp_rl.supervised.onlinenorm`: online normalization (Chiley et al. 2019).
* :mod:`~cbp_rl.supervised.measures`, :mod:`~cbp_rl.supervised.results`: task-start measures,
  ``results.npz``.
* :mod:`~cbp_rl.supervised.experiment`, :mod:`~cbp_rl.supervised.command`: a run, and
  ``python -m cbp_rl.train pmnist``.
"""

from cbp_rl.supervised.data import ImageSet, load_images
from cbp_rl.supervised.engine import BatchedLearner, LearnerSpec, NetworkSpec, ReDoSpec
from cbp_rl.supervised.onlinenorm import OnlineNorm1d, OnlineNormConfig
from cbp_rl.supervised.stream import PermutedTasks, stream_seed

__all__ = [
    "BatchedLearner",
    "ImageSet",
    "LearnerSpec",
    "NetworkSpec",
    "OnlineNorm1d",
    "OnlineNormConfig",
    "PermutedTasks",
    "ReDoSpec",
    "load_images",
    "stream_seed",
]

"""cbp_rl: continual backpropagation for PyTorch, and experiments on loss of plasticity."""

from cbp_rl.cbp import CBPConfig, ContinualBackprop, GenerateAndTest
from cbp_rl.optim import ResettableAdam, make_optimizer

__all__ = ["CBPConfig", "ContinualBackprop", "GenerateAndTest", "ResettableAdam", "make_optimizer"]
__version__ = "0.1.0"

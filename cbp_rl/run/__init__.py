"""What every command shares: atomic checkpoints, run folders and their logs, signals and threads.

Depends on the algorithm layer (``cbp_rl``'s root modules) at most; agents, envs, supervised and
the lab build on it.
"""

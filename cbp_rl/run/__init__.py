"""What every command shares: atomic checkpoints, run folders and their logs, signals and threads.

- :mod:`cbp_rl.run.checkpoint`: atomic, complete, ``weights_only`` checkpoints; the run's two
  latest (``CheckpointManager``, with the ``--resume-fallback`` to the previous one); RNG states.
- :mod:`cbp_rl.run.logging`: TensorBoard, ``episodes.csv``, ``config.json``, ``status.json``,
  resumable exactly.
- :mod:`cbp_rl.run.runtime`: graceful stops on SIGINT/SIGTERM, worker processes that leave stops
  to the main process and die with it, seeding, devices, progress, new run directories.
- :mod:`cbp_rl.run.rundir`: a run directory checked (a writable directory) and locked for as long
  as a command writes it; the lock handed from a sweep to its runs.
- :mod:`cbp_rl.run.conventions`: the conventions of every command: exit codes (0, 2 bad input,
  3 diverged, 130/143 stopped by a signal), refusals naming the command, float flags checked for
  finiteness and range, the stop on a non-finite loss or weight, the memory check up front.

A new command adopts the conventions in a few lines (see :mod:`cbp_rl.run.conventions` for the
whole pattern)::

    @finite_floats
    @dataclass(frozen=True)
    class MyConfig: ...                                   # every float flag finite

    def prepare(config):                                 # no writes before the claim
        claim_run_dir(config.run_dir, command="mine")     # the lock, for the whole run
        ...

    def main(argv):
        return run_command("train mine", lambda: parse(argv), prepare, execute)

Depends on the algorithm layer (``cbp_rl``'s root modules) at most; agents, envs, supervised and
the lab build on it.
"""

"""TensorBoard logs of a many-seed run: the mean over seeds in the run directory, each seed in
``seed_<s>/`` (with its own ``config.json``, ``seed`` = s and ``seeds`` = 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbp_rl.run.logging import RunLogger


class SeedLogs:
    """The root log and one log per seed.

    Args:
        run_dir: the run directory.
        config: the run's JSON-able configuration (written to every ``config.json``).
        seeds: the run seeds.
        resume_step: when resuming, the first step to log again (later events are purged).
        resume_positions: when resuming, the checkpoint's :meth:`positions`.
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        seeds: Sequence[int],
        *,
        resume_step: int | None = None,
        resume_positions: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        dirs = [run_dir] + [run_dir / f"seed_{s}" for s in seeds]
        configs = [dict(config)] + [{**config, "seed": s, "seeds": 1} for s in seeds]
        self.loggers: list[RunLogger] = []
        try:
            for index, (directory, cfg) in enumerate(zip(dirs, configs, strict=True)):
                position = None if resume_positions is None else resume_positions[index]
                step = None if position is None else resume_step
                self.loggers.append(
                    RunLogger(directory, cfg, resume_step=step, resume_position=position)
                )
        except BaseException:
            self.close()
            raise

    def log(self, values: Mapping[str, np.ndarray], step: int) -> None:
        """Log ``{tag: [S] values}``: per seed, and their mean in the root log (tags with a
        non-finite value are left out)."""
        finite = {tag: v for tag, v in values.items() if np.all(np.isfinite(v))}
        if not finite:
            return
        self.loggers[0].scalars({tag: float(np.mean(v)) for tag, v in finite.items()}, step)
        for s, logger in enumerate(self.loggers[1:]):
            logger.scalars({tag: float(v[s]) for tag, v in finite.items()}, step)

    def positions(self) -> list[dict[str, Any]]:
        """Where each log stands (for a checkpoint)."""
        return [logger.position() for logger in self.loggers]

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


__all__ = ["SeedLogs"]

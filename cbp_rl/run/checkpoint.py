"""Checkpoints that survive a kill at any moment and resume a run exactly.

A checkpoint file is ``torch.save`` of one dict, loadable with ``torch.load(weights_only=True)``::

    {
        "format": "cbp_rl.run.checkpoint",   # marker: FORMAT
        "format_version": 1,             # FORMAT_VERSION; a newer file is refused
        "torch_version": "2.x",          # torch that wrote it (information only)
        "saved_at": "2025-01-01T12:00:00+00:00",
        "state": {...},                  # what the caller saved; load_checkpoint returns it
    }

The state holds only tensors, numbers, strings, ``None`` and lists/tuples/dicts of those
(``save_checkpoint`` checks, naming the offending key). Files are written atomically: a temporary
file in the same directory, flushed and fsynced, then ``os.replace``d over the target, so a kill
leaves either the old or the new checkpoint, never half of one. Loading checks the zip CRCs, so a
truncated or bit-flipped file raises ``CheckpointError`` instead of loading wrong numbers.

``CheckpointManager`` keeps ``run_dir/checkpoint.pt`` and the one before it,
``run_dir/checkpoint.prev.pt``, and adds ``"step"`` to the state. A training command uses it as::

    manager = CheckpointManager(run_dir, every=cfg.checkpoint_every)
    if resuming:
        state = manager.load_latest(required=True)
        check_compatible(state["config"], to_jsonable(cfg), ignore=("total_steps",))
        ... load_state_dict(...) for every part; restore_rng_state(state["rng"]) ...
    ...
    if manager.due(step) or stop.requested:
        manager.save(step, {"config": ..., "agent": ..., "rng": capture_rng_state(), ...})
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import math
import os
import pickle
import random
import secrets
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
import torch
from torch import nn

FORMAT = "cbp_rl.run.checkpoint"
FORMAT_VERSION = 1

StrPath = str | os.PathLike[str]

# Types that torch.load(weights_only=True) rebuilds. Exact types: subclasses (numpy.float64 is a
# float, a defaultdict is a dict) pickle under their own class and are refused on load.
_SAFE_ATOMS: tuple[type, ...] = (
    type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
)  # fmt: skip
_SAFE_TENSORS: tuple[type, ...] = (torch.Tensor, nn.Parameter)
_SAFE_SEQUENCES: tuple[type, ...] = (list, tuple)
_SAFE_MAPPINGS: tuple[type, ...] = (dict, collections.OrderedDict)


class CheckpointError(RuntimeError):
    """A checkpoint (or what must match it) cannot be used; the message names the problem and fix.

    Attributes:
        problem: what is wrong.
        path: the file concerned, or ``None``.
        fix: what to do about it.
    """

    def __init__(self, problem: str, path: StrPath | None = None, fix: str = "") -> None:
        self.problem = problem
        self.path = None if path is None else Path(path)
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}" + (f"\nFix: {fix}" if fix else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problem, self.path, self.fix))


class CheckpointWarning(UserWarning):
    """A checkpoint problem that was worked around (e.g. falling back to the previous one)."""


# --------------------------------------------------------------------------- files


def atomic_write(path: StrPath, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: ``write(f)`` into a temporary file beside ``path``, then replace.

    The temporary file is flushed and fsynced before ``os.replace``, and the directory is fsynced
    after, so after a crash or kill ``path`` holds either its old or its new content in full. On
    an exception the temporary file is removed and ``path`` is untouched. The parent directory is
    created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 honours the umask, unlike tempfile.mkstemp (always 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: StrPath) -> None:
    """Make a rename or new file in ``directory`` durable (a no-op where directories can't be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(path: StrPath) -> list[Path]:
    """Temporary files that ``atomic_write(path, ...)`` left behind when a process was killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def to_jsonable(obj: Any, *, where: str = "value") -> Any:
    """``obj`` as plain JSON types: dataclasses -> dicts, tuples/sets -> lists, paths -> str.

    Also converts enums (their value), numpy scalars and arrays, 0-dim tensors (their item),
    ``torch.dtype`` and ``torch.device`` (their str). Raises ``TypeError`` naming the key path of
    anything else. The result is also safe to put into a checkpoint.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            out[str(key)] = to_jsonable(value, where=f"{where}.{key}")
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, where=f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        return [to_jsonable(v, where=f"{where}[{i}]") for i, v in enumerate(sorted(obj, key=repr))]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, where=where)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):  # also numpy/other int subclasses
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1 and obj.dim() == 0:
        return obj.item()
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    raise TypeError(
        f"{where} has type {type(obj).__module__}.{type(obj).__qualname__}, which is not "
        "JSON-able; use numbers, strings, booleans, None, lists, dicts, paths or dataclasses"
    )


# --------------------------------------------------------------------------- save / load


def check_weights_only_safe(obj: Any, *, where: str = "state") -> None:
    """Raise ``TypeError`` naming the key path of the first value weights_only loading refuses.

    Accepted: tensors (and parameters), ``None``, bool, int, float, complex, str, bytes,
    ``torch.dtype``/``device``/``Size``, and lists, tuples, dicts and OrderedDicts of those.
    """
    _check_safe(obj, where, set())


def _check_safe(obj: Any, where: str, active: set[int]) -> None:
    kind = type(obj)
    if kind in _SAFE_ATOMS or kind in _SAFE_TENSORS:
        return
    if kind in _SAFE_SEQUENCES or kind in _SAFE_MAPPINGS:
        if id(obj) in active:
            raise TypeError(f"{where} contains itself; a checkpoint cannot hold a cycle")
        active.add(id(obj))
        if kind in _SAFE_MAPPINGS:
            for key, value in obj.items():
                _check_safe(key, f"{where} (key {key!r})", active)
                _check_safe(value, f"{where}[{key!r}]", active)
        else:
            for i, value in enumerate(obj):
                _check_safe(value, f"{where}[{i}]", active)
        active.discard(id(obj))
        return
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(obj, np.ndarray):
        hint = "convert it with torch.from_numpy(...) or .tolist()"
    elif isinstance(obj, np.generic):
        hint = "convert it with .item()"
    elif isinstance(obj, np.random.Generator):
        hint = "store numpy_generator_state(generator) instead"
    elif isinstance(obj, torch.Generator):
        hint = "store torch_generator_state(generator) instead"
    elif isinstance(obj, nn.Module | torch.optim.Optimizer):
        hint = "store its state_dict() instead"
    else:
        hint = "store tensors, numbers, strings, or lists/dicts of those (e.g. a state_dict())"
    raise TypeError(f"{where} has type {name}, which torch.load(weights_only=True) refuses; {hint}")


def save_checkpoint(path: StrPath, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, wrapped with the format marker and version.

    Raises ``TypeError`` (naming the key path) if ``state`` holds anything weights_only loading
    refuses; nothing is written then.
    """
    if type(state) not in _SAFE_MAPPINGS:
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    check_weights_only_safe(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torch_version": str(torch.__version__),  # a str subclass otherwise
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "state": state,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


_CORRUPT_FIX = (
    "the file cannot be used; resume from the previous checkpoint (checkpoint.prev.pt: "
    "--resume-fallback) or start a new run"
)


def load_checkpoint(path: StrPath, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The state saved by ``save_checkpoint(path, state)``, loaded with ``weights_only=True``.

    Raises ``CheckpointError`` if the file is missing, truncated, corrupt (zip CRC mismatch),
    holds objects weights_only loading refuses, is not a cbp_rl checkpoint, or has a format
    version this code does not read.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            "checkpoint file does not exist",
            path,
            "check the path; a run directory keeps its checkpoint as checkpoint.pt",
        )
    if not path.is_file():
        raise CheckpointError("is not a file", path, "pass the checkpoint file itself")
    _verify_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"holds objects that torch.load(weights_only=True) refuses ({_reason(err)}); it was "
            "not written by cbp_rl's save_checkpoint",
            path,
            "use a checkpoint written by cbp_rl (checkpoint.pt in a run directory)",
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"is corrupt or truncated: torch.load failed with {type(err).__name__}: {err}",
            path,
            _CORRUPT_FIX,
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"is not a cbp_rl checkpoint (no {FORMAT!r} format marker; e.g. a bare state_dict "
            "saved with torch.save)",
            path,
            "resume from a run directory written by cbp_rl, whose checkpoint.pt has the marker",
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"has checkpoint format version {version!r}, but this cbp_rl reads version "
            f"{FORMAT_VERSION}",
            path,
            "load it with the cbp_rl version that wrote it (see its torch_version and saved_at)",
        )
    state = payload.get("state")
    if not isinstance(state, dict):
        raise CheckpointError("has no state dict", path, _CORRUPT_FIX)
    return state


def _reason(err: Exception) -> str:
    """The informative line of torch's long weights_only error message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line or "Unsupported" in line:
            return line
    return lines[0] if lines else type(err).__name__


def _verify_archive(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is a complete zip with matching CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # BadZipFile, EOFError, OSError, struct errors...
        size = path.stat().st_size
        raise CheckpointError(
            f"is corrupt or truncated: not a complete checkpoint archive ({size} bytes; "
            f"{type(err).__name__}: {err})",
            path,
            _CORRUPT_FIX,
        ) from err
    if bad is not None:
        raise CheckpointError(
            f"is corrupt: record {bad!r} fails its CRC check (the file changed after writing)",
            path,
            _CORRUPT_FIX,
        )


# --------------------------------------------------------------------------- config


_ABSENT = "<absent>"


def check_compatible(
    saved_config: Any,
    current_config: Any,
    *,
    ignore: Iterable[str] = (),
    path: StrPath | None = None,
) -> None:
    """Raise ``CheckpointError`` listing every field where the configurations differ.

    Both configs (dicts or dataclasses) are compared as JSON values (so a tuple equals the list it
    became in ``config.json``); nested dicts are compared field by field with dotted names
    (``env.id``). ``ignore`` names fields that may change on resume (e.g. ``"total_steps"``,
    ``"device"``); a name also ignores the fields nested under it. ``path`` names the checkpoint
    in the message.
    """
    saved = flatten_dict(to_jsonable(saved_config, where="saved config"))
    current = flatten_dict(to_jsonable(current_config, where="current config"))
    ignored = tuple(ignore)
    diffs = []
    for name in sorted(saved.keys() | current.keys()):
        if any(name == i or name.startswith(f"{i}.") for i in ignored):
            continue
        old, new = saved.get(name, _ABSENT), current.get(name, _ABSENT)
        if not _same(old, new):
            diffs.append(f"  {name}: saved {_show(old)}, current {_show(new)}")
    if diffs:
        raise CheckpointError(
            f"the configuration differs from the checkpoint's in {len(diffs)} field(s):\n"
            + "\n".join(diffs),
            path,
            "resume with the saved values (config.json in the run directory), or start a new run "
            "for the new configuration",
        )


def flatten_dict(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested JSON object as one level, ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty
    nested object stays a value)."""
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_dict(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: NaN equals NaN, ``True`` differs from ``1``, ``1`` equals ``1.0``."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    return value if value is _ABSENT else repr(value)


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states, as weights_only-safe values: Python ``random``, numpy's legacy
    global RNG, torch CPU, and torch CUDA (every device, only if CUDA has been initialized)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state().clone(),
        "torch_cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to a ``capture_rng_state()`` result (e.g. from a checkpoint).

    CUDA states are restored where CUDA is available; otherwise (or when the device count
    differs) a ``CheckpointWarning`` says which were not.
    """
    missing = {"python", "numpy", "torch"} - state.keys()
    if missing:
        raise ValueError(f"RNG state lacks {sorted(missing)}; pass a capture_rng_state() result")
    py = state["python"]
    random.setstate(
        (py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"])
    )
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            np.asarray(npy["keys"].cpu().numpy(), dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = list(state.get("torch_cuda", []))
    if not cuda:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            f"the RNG state holds {len(cuda)} CUDA generator state(s) but CUDA is not available; "
            "they are not restored, so GPU random draws will not continue exactly",
            CheckpointWarning,
            stacklevel=2,
        )
        return
    count = torch.cuda.device_count()
    if count != len(cuda):
        warnings.warn(
            f"the RNG state holds {len(cuda)} CUDA generator state(s) but {count} device(s) are "
            f"visible; restoring the first {min(count, len(cuda))}",
            CheckpointWarning,
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(cuda_state.cpu().to(torch.uint8), device)


def numpy_generator_state(
    generator: np.random.Generator | np.random.BitGenerator,
) -> dict[str, Any]:
    """The state of a numpy ``Generator`` (or bit generator) as weights_only-safe values.

    Arrays in the state become ``{"__ndarray__": dtype, "shape": [...], "data": uint8 tensor}``.
    """
    bit_generator = (
        generator.bit_generator if isinstance(generator, np.random.Generator) else generator
    )
    return _numpy_to_safe(bit_generator.state)


def restore_numpy_generator(
    generator: np.random.Generator | np.random.BitGenerator, state: Mapping[str, Any]
) -> None:
    """Set a numpy ``Generator`` to a ``numpy_generator_state`` result, in place.

    Raises ``ValueError`` if the state is of another bit generator (e.g. MT19937 vs PCG64).
    """
    bit_generator = (
        generator.bit_generator if isinstance(generator, np.random.Generator) else generator
    )
    saved_name = state.get("bit_generator")
    current_name = type(bit_generator).__name__
    if saved_name != current_name:
        raise ValueError(
            f"the saved numpy generator state is for {saved_name!r}, but this generator uses "
            f"{current_name!r}; create the generator with the same bit generator"
        )
    bit_generator.state = _safe_to_numpy(state)


def _numpy_to_safe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        data = torch.frombuffer(bytearray(np.ascontiguousarray(value).tobytes()), dtype=torch.uint8)
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "data": data}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _numpy_to_safe(item) for key, item in value.items()}
    return value


def _safe_to_numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "__ndarray__" in value:
            raw = value["data"].cpu().numpy().tobytes()
            array = np.frombuffer(raw, dtype=np.dtype(value["__ndarray__"]))
            return array.reshape(value["shape"]).copy()
        return {key: _safe_to_numpy(item) for key, item in value.items()}
    return value


def torch_generator_state(generator: torch.Generator) -> dict[str, Any]:
    """The state of a ``torch.Generator`` as weights_only-safe values (its device and state)."""
    return {"device": str(generator.device), "state": generator.get_state().clone()}


def restore_torch_generator(generator: torch.Generator, state: Mapping[str, Any]) -> None:
    """Set a ``torch.Generator`` to a ``torch_generator_state`` result, in place.

    Raises ``ValueError`` if the generator is on another device type than the saved one.
    """
    saved_type = torch.device(state["device"]).type
    if saved_type != generator.device.type:
        raise ValueError(
            f"the saved torch generator state is for a {saved_type} generator, but this one is "
            f"on {generator.device}; create the generator on the same device type"
        )
    generator.set_state(state["state"].cpu().to(torch.uint8))


# --------------------------------------------------------------------------- run directories


class CheckpointManager:
    """The checkpoints of one run directory: ``checkpoint.pt`` and the previous one.

    ``save`` first makes ``checkpoint.prev.pt`` a copy (hard link) of the current
    ``checkpoint.pt``, then replaces ``checkpoint.pt`` atomically, so at every moment
    ``checkpoint.pt`` is a complete checkpoint. ``load_latest`` falls back to the previous one
    only when asked (``fallback=True``), with a ``CheckpointWarning``.

    Args:
        run_dir: the run directory (created on the first save).
        every: save when ``due(step)``: each time ``step`` reaches a new multiple of ``every``;
            0 disables periodic checkpoints (saves on exit still work).
    """

    FILENAME = "checkpoint.pt"
    PREV_FILENAME = "checkpoint.prev.pt"

    def __init__(self, run_dir: StrPath, *, every: int = 0) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"every must be an int >= 0 (0 disables), got {every!r}")
        self.run_dir = Path(run_dir)
        self.every = every
        self.last_step: int | None = None
        """The step of the last checkpoint saved or loaded, ``None`` before any."""
        self._latest_is_bad = False

    @property
    def path(self) -> Path:
        """``run_dir/checkpoint.pt``, the latest checkpoint."""
        return self.run_dir / self.FILENAME

    @property
    def prev_path(self) -> Path:
        """``run_dir/checkpoint.prev.pt``, the checkpoint before the latest."""
        return self.run_dir / self.PREV_FILENAME

    def exists(self) -> bool:
        """Whether the run directory holds a checkpoint (the latest or the previous one)."""
        return self.path.is_file() or self.prev_path.is_file()

    def due(self, step: int) -> bool:
        """Whether ``step`` has reached a multiple of ``every`` not reached at the last save.

        Works for loops whose step grows by more than one (e.g. by ``num_envs * num_steps``).
        """
        if self.every == 0:
            return False
        return step // self.every > (self.last_step or 0) // self.every

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Save ``state`` plus ``"step": step`` as the latest checkpoint; returns its path.

        Raises ``TypeError`` before touching any file if the state is not weights_only-safe, and
        ``ValueError`` if ``state`` has a ``"step"`` other than ``step``.
        """
        step = int(step)
        if "step" in state and state["step"] != step:
            raise ValueError(f"state['step'] is {state['step']!r} but step is {step}")
        payload = {**state, "step": step}
        check_weights_only_safe(payload)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in stale_temp_files(self.path) + stale_temp_files(self.prev_path):
            with contextlib.suppress(OSError):
                stale.unlink()
        # After a fallback load the latest file is bad: keep the good previous one instead.
        if self.path.is_file() and not self._latest_is_bad:
            _link_or_copy(self.path, self.prev_path)
        save_checkpoint(self.path, payload)
        self._latest_is_bad = False
        self.last_step = step
        return self.path

    def load_latest(
        self, *, fallback: bool = False, required: bool = False, map_location: Any = "cpu"
    ) -> dict[str, Any] | None:
        """The latest checkpoint's state (with ``"step"``), or ``None`` if the run has none.

        Args:
            fallback: if the latest checkpoint is missing or unreadable, load the previous one
                with a ``CheckpointWarning`` instead of raising (the commands'
                ``--resume-fallback``; the error without it suggests that flag).
            required: raise ``CheckpointError`` instead of returning ``None`` when the run
                directory has no checkpoint at all (use when resuming).
            map_location: as for ``torch.load``.

        Raises:
            CheckpointError: the latest checkpoint is unusable (and ``fallback`` is off or the
                previous one is unusable too), or none exists and ``required`` is set.
        """
        if not self.exists():
            if required:
                raise CheckpointError(
                    f"there is no checkpoint to resume from (no {self.FILENAME})",
                    self.run_dir,
                    "check the run directory; only runs with periodic or on-exit checkpoints "
                    "can be resumed",
                )
            return None
        try:
            state = load_checkpoint(self.path, map_location=map_location)
            used = self.path
        except CheckpointError as err:
            if not self.prev_path.is_file():
                raise
            if not fallback:
                raise CheckpointError(
                    err.problem,
                    err.path,
                    f"add --resume-fallback to resume from the previous checkpoint "
                    f"{self.prev_path} instead, or start a new run",
                ) from err
            try:
                state = load_checkpoint(self.prev_path, map_location=map_location)
            except CheckpointError as prev_err:
                raise CheckpointError(
                    f"both checkpoints are unusable: {self.FILENAME} {err.problem}; "
                    f"{self.PREV_FILENAME} {prev_err.problem}",
                    self.run_dir,
                    "start a new run",
                ) from prev_err
            warnings.warn(
                f"{err.path}: {err.problem}; resuming from the previous checkpoint "
                f"{self.prev_path} (step {state.get('step')!r}) instead",
                CheckpointWarning,
                stacklevel=2,
            )
            self._latest_is_bad = True
            used = self.prev_path
        step = state.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise CheckpointError(
                "holds no integer 'step': it was not written by CheckpointManager",
                used,
                "resume from a run directory written by a cbp_rl train command",
            )
        self.last_step = step
        return state


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of ``src`` (a hard link where the file system allows)."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already linked (a save that was interrupted after this step)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        # Gone after a successful rename; left after a failure, or after a rename that POSIX
        # skips because tmp and dst were already links to one file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(dst.parent)

"""The command registry: every registered module describes the command it is registered as, and
the entry points and the sweeps read the commands from it."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from cbp_rl.cbp import CBPConfig
from cbp_rl.lab.commands import COMMANDS, MODULES, CommandRegistry, UnknownCommandError
from cbp_rl.lab.spec import SpecError, command_flags, parse_spec
from cbp_rl.run.cbp_flags import RENAMED, to_cbp_config
from cbp_rl.run.command import Command


@pytest.mark.parametrize("name", list(MODULES))
def test_each_registered_module_describes_its_command(name: str) -> None:
    module = importlib.import_module(MODULES[name])
    command = COMMANDS[name]
    assert isinstance(command, Command) and command is module.COMMAND
    assert command.name == name and command.summary
    assert command.main is module.main and command.parse is module.parse
    config = command.parse(["--run-dir", "somewhere"])
    assert isinstance(config, command.config) and dataclasses.is_dataclass(config)
    assert command.budget(config) > 0
    assert all(flag.startswith("--") for flag in command.budget_flags)
    words = command.seed_flags([3, 4] if command.batches_seeds else [3])
    assert words[:2] == ["--seed", "3"]


def test_train_lists_the_registered_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cbp_rl.train", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    for name in MODULES:
        assert f"  {name:<8} {COMMANDS[name].summary}" in done.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "cbp_rl.train", "nope"], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr


def test_a_module_registered_under_another_name_is_refused() -> None:
    registry = CommandRegistry({"other": MODULES["pmnist"], "absent": "cbp_rl.no_such_module"})
    assert list(registry) == ["other"] and "absent" not in registry
    with pytest.raises(RuntimeError, match="named 'pmnist', registered as 'other'"):
        registry["other"]
    with pytest.raises(UnknownCommandError, match="unknown command 'absent'; choose one of other"):
        registry["absent"]


def test_sweeps_and_evaluate_read_the_registry() -> None:
    with pytest.raises(SpecError, match="unknown command 'nope'; choose one of ppo, sac, pmnist"):
        parse_spec({"command": "nope"})
    assert parse_spec({"command": "pmnist"}).command is COMMANDS["pmnist"]
    assert COMMANDS.policy_loader("ppo") is COMMANDS["ppo"].load_policy
    with pytest.raises(ValueError, match="pmnist runs have no policy to evaluate"):
        COMMANDS.policy_loader("pmnist")
    with pytest.raises(ValueError, match="unknown command 'nope'"):
        COMMANDS.policy_loader("nope")


def test_the_cbp_flags_are_cbp_configs_fields() -> None:
    """The commands' CBP flags come from the one declaration, CBPConfig: every field is a flag
    (``init`` as ``--cbp-init``; RL leaves bias compensation out), and pmnist's flags give back
    the CBPConfig they stand for."""
    names = [RENAMED.get(f.name, f.name).replace("_", "-") for f in dataclasses.fields(CBPConfig)]
    for command, left_out in (("ppo", {"bias-compensation"}), ("sac", {"bias-compensation"})):
        flags = command_flags(COMMANDS[command].config)
        assert set(names) - left_out <= set(flags) and not left_out & set(flags)
    assert set(names) <= set(command_flags(COMMANDS["pmnist"].config))
    config = COMMANDS["pmnist"].parse(["--maturity-threshold", "7", "--cbp-init", "lecun"])
    assert config.cbp.to_cbp_config() == CBPConfig(
        maturity_threshold=7, init="lecun", utility="adaptable_contribution", accumulate=True
    )
    assert to_cbp_config(COMMANDS["ppo"].parse([]).methods, init="xavier").maturity_threshold == (
        10_000
    )

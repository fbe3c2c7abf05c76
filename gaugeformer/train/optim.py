"""The reference's optimiser as optax: AdamW over parameter groups, warmup + cosine, global-norm clipping.

Groups (ref-architecture §8.2, by parameter path; the reference matches substrings of torch names):

=========  =======================================================  ==========  =============
group      parameters                                               lr          weight decay
=========  =======================================================  ==========  =============
``mu``     ``embed.mu_embed``                                       ``mu_lr``   0
``phi``    ``embed.phi_embed``, ``pos_phi``                         ``phi_lr``  0
``output`` ``out_proj``                                             ``ffn_lr``  0
``ffn``    everything else (base_mu, log σ, pos_embed, VFE lr, …)   ``ffn_lr``  ``weight_decay``
=========  =======================================================  ==========  =============

The reference puts ``base_mu``, ``base_log_sigma_diag``, ``pos_embed`` and the VFE step size in the ``ffn``
group *with* weight decay (§11.13).  ``clean_groups=True`` moves the belief tables (base_mu, log σ, pos_embed)
to the ``mu`` group without decay.

The schedule is the reference's LambdaLR factor ``t/warmup`` then ``½(1 + cos(π_ref (t-warmup)/(T-warmup)))``
with ``π_ref = 3.14159`` as the reference writes it (``pi=math.pi`` in the clean setting).  Clipping matches
``torch.nn.utils.clip_grad_norm_``: ``g · min(1, max_norm / (‖g‖ + 1e-6))``.

Gradient accumulation (``accumulate_steps = k > 1``): ``optax.MultiSteps`` averages the gradients
of k consecutive batches and applies the whole chain above (clip, AdamW, schedule) once to that
mean; the k − 1 calls in between leave the parameters unchanged.  The schedule and AdamW's bias
correction count *updates*, so ``warmup_steps`` and ``max_steps`` are in updates.  Every training
batch has B·N valid targets, so the mean of the k batch-mean losses is the loss of one batch of
k·B rows and k accumulated batches equal one batch of k·B (to float32 rounding); with ignored
targets (-100) the batch means would weigh batches, not tokens, and the two would differ.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

GROUPS = ("mu", "phi", "ffn", "output")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser hyper-parameters (reference defaults; see the module docstring)."""

    mu_lr: float = 0.2
    phi_lr: float = 0.05
    ffn_lr: float = 0.2
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 25
    max_steps: int = 20000
    schedule_pi: float = 3.14159
    clean_groups: bool = False
    accumulate_steps: int = 1

    def __post_init__(self):
        if self.accumulate_steps < 1:
            raise ValueError(f"optim.accumulate_steps must be >= 1, got {self.accumulate_steps}")

    def update_index(self, micro_step):
        """0-based update number of 0-based training batch ``micro_step``."""
        return micro_step // self.accumulate_steps


def group_of(path: tuple, clean_groups: bool = False) -> str:
    """Parameter path (``("embed", "phi_embed")``) -> optimiser group name."""
    names = [str(p) for p in path]
    leaf = names[-1]
    if leaf == "mu_embed":
        return "mu"
    if leaf in ("phi_embed", "pos_phi"):
        return "phi"
    if leaf == "out_proj":
        return "output"
    if clean_groups and leaf in ("base_mu", "base_log_sigma_diag", "log_sigma_diag", "pos_embed"):
        return "mu"
    return "ffn"


def _names(path) -> tuple:
    """Key path -> names, without the ``value`` entry that NNX Variables add at the leaf."""
    names = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return names[:-1] if names and names[-1] == "value" else names


def schedule_factor(step, cfg: OptimConfig):
    """The reference's LambdaLR factor at 0-based step ``step`` (float32, like the reference)."""
    step = jnp.asarray(step, jnp.float32)
    warm = step / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    cos = 0.5 * (1.0 + jnp.cos(jnp.float32(cfg.schedule_pi) * (step - cfg.warmup_steps) / span))
    return jnp.where(step < cfg.warmup_steps, warm, cos)


def torch_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``clip_grad_norm_``: scale by ``min(1, max_norm / (‖g‖ + 1e-6))``."""

    def update(updates, state, params=None):
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * coef, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def group_lr(group: str, cfg: OptimConfig) -> float:
    return {"mu": cfg.mu_lr, "phi": cfg.phi_lr, "ffn": cfg.ffn_lr, "output": cfg.ffn_lr}[group]


def group_weight_decay(group: str, cfg: OptimConfig) -> float:
    return cfg.weight_decay if group == "ffn" else 0.0


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``chain(clip, multi_transform({group: adamw}))`` with labels from :func:`group_of`, inside
    ``optax.MultiSteps`` when ``accumulate_steps > 1``."""

    def adamw(group):
        lr = group_lr(group, cfg)
        return optax.adamw(lambda t: lr * schedule_factor(t, cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=group_weight_decay(group, cfg))

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: group_of(_names(path), cfg.clean_groups), params)

    tx = optax.chain(
        torch_clip_by_global_norm(cfg.grad_clip),
        optax.multi_transform({g: adamw(g) for g in GROUPS}, labels),
    )
    if cfg.accumulate_steps == 1:
        return tx
    return optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps).gradient_transformation()


def learning_rates(step: int, cfg: OptimConfig) -> dict[str, float]:
    """Per-group learning rate used at ``step`` (for logging)."""
    f = float(schedule_factor(step, cfg))
    return {g: group_lr(g, cfg) * f for g in GROUPS}


def build_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """:func:`make_optimizer`, initialised on plain arrays: the one optimizer of the trainer and
    of every checkpoint (trained or converted) with an ``opt_state``.

    ``nnx.Optimizer`` calls ``tx.init`` on a state whose leaves sit under ``Param`` nodes, whose
    paths end in ``.value``, so :func:`group_of` would put every parameter in ``ffn`` (and the
    nodes would appear inside the optax state).  Initialising on ``nnx.as_pure`` keeps the real
    groups and a plain state.
    """
    tx = make_optimizer(cfg)
    return optax.GradientTransformation(lambda params: tx.init(nnx.as_pure(params)), tx.update)

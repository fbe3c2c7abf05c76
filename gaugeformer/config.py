"""Model configuration: one frozen, validated dataclass, with two *profiles*.

``profile="reference"`` reproduces the PyTorch reference (cdenn016/VFE-Sim-GPU-Refactor @ 826c807) number for
number; converted checkpoints run with it.  ``profile="clean"`` fixes every reference bug, each behind its own
flag, so a bug fix can be ablated alone (``ModelConfig(profile="clean", attention_transport="taylor4")``).
A flag left at ``None`` takes its profile's value; see :data:`PROFILES`.

=========================  ===================  ================  ===============================================
flag                       reference            clean             what the reference does wrong
=========================  ===================  ================  ===============================================
attention_transport        ``"taylor4"``        ``"exact"``       Ω = T4(φ_i·G) T4(-φ_j·G) is not orthogonal for
                                                                  l·|φ| ≳ 1, so KL loses gauge invariance
causal                     ``"reference_eps"``  ``"strict"``      β is clamped at 1e-8 (FFN: 1e-6) *after* the
                                                                  softmax: masked future keys leak into values,
                                                                  gradients and row sums
logdet_eps_in_log          True                 False             ``log(diag L + ε)``: a biased log-det
ffn_coupling_sign          ``"reference"``      ``"true"``        softmax-coupling term has the wrong sign
                                                                  (ref-ffn §8.1)
train_forward              ``"reference"``      ``"consistent"``  the training forward forces residuals in the
                                                                  last block; inference does not (§0.5)
phi_step                   ``"train_only"``     ``"always"``      the FFN's φ step runs only under autograd, so
                                                                  eval/generation see different frames
so3_log                    ``"reference"``      ``"stable"``      acos log map: NaN gradient at the identity,
                                                                  imprecise for small angles
prior_includes_pos_embed   True                 False             μ_prior contains pos_embed although documented
                                                                  as position-independent
phi_step_grad              ``"all_pairs"``      ``"query_role"``  the φ step differentiates Σ_ij β_ij KL_ij also
                                                                  through φ_i as a *key* of later queries, so
                                                                  updated frames depend on future tokens
=========================  ===================  ================  ===============================================
"""

import dataclasses
import json
import math
from typing import Any, Literal

from gaugeformer.ops import so3

Profile = Literal["reference", "clean"]

PROFILES: dict[str, dict[str, Any]] = {
    "reference": dict(
        attention_transport="taylor4",
        causal="reference_eps",
        logdet_eps_in_log=True,
        ffn_coupling_sign="reference",
        train_forward="reference",
        phi_step="train_only",
        so3_log="reference",
        prior_includes_pos_embed=True,
        phi_step_grad="all_pairs",
    ),
    "clean": dict(
        attention_transport="exact",
        causal="strict",
        logdet_eps_in_log=False,
        ffn_coupling_sign="true",
        train_forward="consistent",
        phi_step="always",
        so3_log="stable",
        prior_includes_pos_embed=False,
        phi_step_grad="query_role",
    ),
}

_CHOICES = {
    "basis": so3.BASES,
    "profile": tuple(PROFILES),
    "attention_transport": ("taylor4", "exact"),
    "causal": ("reference_eps", "strict"),
    "ffn_coupling_sign": ("reference", "true"),
    "train_forward": ("reference", "consistent"),
    "phi_step": ("train_only", "always"),
    "so3_log": ("reference", "stable"),
    "pos_encoding_mode": ("none", "learned", "sinusoidal"),
    "pos_composition": ("exact", "add"),
    "attention_pattern": ("full", "local", "strided"),
    "ffn": ("vfe", "mlp"),
    "kl_impl": ("factorized", "direct"),
    "logits_precision": ("highest", "default"),
    "phi_step_grad": ("all_pairs", "query_role"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything that determines the model's parameters and forward computation.

    Attributes:
      vocab_size: V.
      embed_dim: K; must equal the total irrep dimension (or exceed it with ``pad_heads``).
      n_layers: number of blocks.
      max_seq_len: rows of the positional tables.
      irreps: heads, as an e3nn-jax string (``"5x0e+3x1e+1x2e"``) or the reference's ``irrep_spec`` list
        (``[("ℓ0",5,1), ("ℓ1",3,3), ("ℓ2",1,5)]``); stored as the canonical string.
      kappa_beta: attention temperature κ (shared by all heads and layers, and by the VFE FFN).
      profile: ``"reference"`` or ``"clean"``; fills every bug flag left at None.
      basis: real basis of the irreps, ``"e3nn"`` (y polar) or ``"reference"`` (z polar; converted
        checkpoints, where a diagonal prior Σ must stay diagonal).
      pad_heads: allow irreps summing to less than K, padding with scalar heads (the reference does).
      gauge_fixed_priors: μ_i = R(φ_i) μ_0, Σ_i = R diag(exp(s_0)) Rᵀ instead of per-token tables.
      evolve_sigma: attention and FFN update Σ (moment-matched aggregation).
      evolve_phi: the FFN takes a φ step.
      diagonal_covariance: carry Σ as variances (ignored with gauge-fixed priors, as in the reference).
      mu_init_std: std of ``base_mu`` at init.
      mu_normalize / mu_max_norm: optional normalisation of embedded μ.
      use_positional_embedding: add a learned (max_seq_len, K) table to μ.
      tie_embeddings: out_proj is mu_embed (only without gauge-fixed priors).
      pos_encoding_mode / pos_encoding_scale / pos_composition: positional frames composed into φ.
      attention_pattern / attention_window: mask shape (always causal).
      alibi_slope: adds slope·(i - j) to attention logits (None: off).
      mask_self_attention: mask the diagonal where a row has another key.
      use_layernorm / use_residual: block wiring (reference default: neither).
      ffn: ``"vfe"`` (VFE_dynamic) or ``"mlp"`` (the historic learned MLP, pre-LN residual).
      hidden_dim: MLP width.
      ffn_n_iterations / ffn_learnable_lr / ffn_lambda_belief / ffn_update_sigma: VFE settings.
      alpha: self-coupling weight (FFN and loss).
      phi_lr / phi_max_norm: the FFN's φ step.
      kl_eps: regulariser added to covariances in every KL.
      kl_impl: ``"factorized"`` (default, GEMM-based) or ``"direct"`` (per-pair reference formula; small N).
      attention_tile: query/key block size T of the tiled attention, FFN and loss (no ``[B,H,N,N]`` tensor
        is built unless a hook asks for one); ``None`` is one tile.  Exact for every T (tests).
      logits_precision: the output projection's matmul precision: ``"highest"`` (full float32 on every
        backend, default) or ``"default"`` (the platform's: bf16 on TPU, TF32 on recent GPUs; faster).
        Every other contraction is always full precision (:mod:`gaugeformer.ops.precision`).
      attention_transport, causal, logdet_eps_in_log, ffn_coupling_sign, train_forward, phi_step, so3_log,
        prior_includes_pos_embed, phi_step_grad: bug flags, see the module docstring.
    """

    vocab_size: int
    embed_dim: int
    n_layers: int
    max_seq_len: int
    irreps: Any
    kappa_beta: float
    profile: str = "clean"
    basis: str = "e3nn"
    pad_heads: bool = False
    gauge_fixed_priors: bool = True
    evolve_sigma: bool = True
    evolve_phi: bool = True
    diagonal_covariance: bool = False
    mu_init_std: float = 2.0
    mu_normalize: bool = False
    mu_max_norm: float | None = None
    use_positional_embedding: bool = True
    tie_embeddings: bool = False
    pos_encoding_mode: str = "learned"
    pos_encoding_scale: float = 0.1
    pos_composition: str = "exact"
    attention_pattern: str = "full"
    attention_window: int = 24
    alibi_slope: float | None = None
    mask_self_attention: bool = False
    use_layernorm: bool = False
    use_residual: bool = False
    ffn: str = "vfe"
    hidden_dim: int = 64
    ffn_n_iterations: int = 1
    ffn_learnable_lr: bool = True
    ffn_lambda_belief: float = 1.0
    ffn_update_sigma: bool = True
    alpha: float = 1.0
    phi_lr: float = 0.05
    phi_max_norm: float = 3.14159
    kl_eps: float = 1e-6
    kl_impl: str = "factorized"
    attention_tile: int | None = 128
    logits_precision: str = "highest"
    attention_transport: str | None = None
    causal: str | None = None
    logdet_eps_in_log: bool | None = None
    ffn_coupling_sign: str | None = None
    train_forward: str | None = None
    phi_step: str | None = None
    so3_log: str | None = None
    prior_includes_pos_embed: bool | None = None
    phi_step_grad: str | None = None

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile={self.profile!r}: expected one of {tuple(PROFILES)}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "irreps", so3.irreps_string(self.irreps))
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {choices}")
        for name in ("vocab_size", "embed_dim", "n_layers", "max_seq_len", "ffn_n_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_tile is not None and (not isinstance(self.attention_tile, int)
                                                or self.attention_tile < 1):
            raise ValueError(f"attention_tile must be a positive int or None, got {self.attention_tile!r}")
        if not (self.kappa_beta > 0 and math.isfinite(self.kappa_beta)):
            raise ValueError(f"kappa_beta must be a positive number, got {self.kappa_beta}")
        so3.head_layout(self.irreps, self.embed_dim, self.pad_heads)  # raises on a dimension mismatch
        if self.gauge_fixed_priors and self.diagonal_covariance:
            raise ValueError(
                "diagonal_covariance=True is incompatible with gauge_fixed_priors=True (R diag Rᵀ is not "
                "diagonal); set one of them to False"
            )
        if self.tie_embeddings and self.gauge_fixed_priors:
            raise ValueError(
                "tie_embeddings=True needs gauge_fixed_priors=False (there is no mu_embed table to tie)"
            )

    # ------------------------------------------------------------------ derived
    @property
    def layout(self) -> so3.HeadLayout:
        return so3.head_layout(self.irreps, self.embed_dim, self.pad_heads)

    @property
    def n_heads(self) -> int:
        return self.layout.n_heads

    @property
    def head_labels(self) -> tuple[str, ...]:
        return self.layout.labels

    @property
    def irrep_spec(self) -> list[tuple[str, int, int]]:
        return [tuple(e) for e in so3.parse_irreps(self.irreps)]

    @property
    def attention_floor(self) -> float | None:
        return 1e-8 if self.causal == "reference_eps" else None

    @property
    def ffn_floor(self) -> float | None:
        return 1e-6 if self.causal == "reference_eps" else None

    @property
    def eps_log(self) -> float:
        return self.kl_eps if self.logdet_eps_in_log else 0.0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict with exactly this class's keys (``irrep_spec`` is accepted for ``irreps``)."""
        d = dict(d)
        if "irrep_spec" in d:
            if "irreps" in d:
                raise ValueError("give either 'irreps' or 'irrep_spec', not both")
            d["irreps"] = d.pop("irrep_spec")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}; valid keys: {sorted(names)}"
            )
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"missing model config keys {missing}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def resolve_reference_kappa(d: dict[str, Any]) -> float:
    """κ exactly as ``train_publication`` resolves it (ref-architecture §4.5)."""
    if d.get("kappa_beta_auto_scale", False):
        return float(d.get("kappa_beta_base", 1.0)) * float(d["embed_dim"]) / float(d.get("kappa_beta_k_ref", 11))
    if d.get("kappa_beta") is not None:
        return float(d["kappa_beta"])
    return float(d.get("kappa_beta_base", 1.0))


def from_reference_dict(d: dict[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """Translate the reference's model-config dict (``model_config.json`` or ``experiment_config.json``'s
    ``config``) into a ``profile="reference"``, ``basis="reference"`` :class:`ModelConfig`.

    Model defaults not present in the dict are the reference's ``model.py`` defaults (ref-architecture §9.1).
    ``vocab_size`` overrides the dict's (``train_publication`` replaces its placeholder with the tokenizer's).
    """
    if d.get("gauge_group", "SO3") != "SO3":
        raise ValueError(f"gauge_group={d['gauge_group']!r}: only SO(3) is supported")
    if not d.get("use_multi_irrep", False):
        raise ValueError(
            "use_multi_irrep=False: the reference then uses one spin-(K-1)/2 generator block for the FFN and "
            "embedding but per-head irreps in attention (ref-architecture §11.6); only use_multi_irrep=True "
            "checkpoints are supported"
        )
    if d.get("ffn_pure_fep_mode", False):
        raise ValueError("ffn_pure_fep_mode=True (pure-FEP priors) is not supported")
    k = int(d["embed_dim"])
    out = dict(
        vocab_size=int(vocab_size if vocab_size is not None else d["vocab_size"]),
        embed_dim=k,
        n_layers=int(d["n_layers"]),
        max_seq_len=int(d["max_seq_len"]),
        irreps=[tuple(e) for e in d["irrep_spec"]],
        kappa_beta=resolve_reference_kappa(d),
        profile="reference",
        basis="reference",
        pad_heads=True,
        gauge_fixed_priors=bool(d.get("gauge_fixed_priors", False)),
        evolve_sigma=bool(d.get("evolve_sigma", False)),
        evolve_phi=bool(d.get("evolve_phi", False)),
        diagonal_covariance=bool(d.get("diagonal_covariance", False)) and not d.get("gauge_fixed_priors"),
        mu_init_std=float(d.get("mu_init_std") or 2.0),
        mu_normalize=bool(d.get("mu_normalize", False)),
        mu_max_norm=d.get("mu_max_norm"),
        use_positional_embedding=bool(d.get("use_positional_embedding", True)),
        tie_embeddings=bool(d.get("tie_embeddings", True)) and not d.get("gauge_fixed_priors", False),
        pos_encoding_mode=d.get("pos_encoding_mode", "none"),
        pos_encoding_scale=float(d.get("pos_encoding_scale", 0.1)),
        pos_composition="exact",
        attention_pattern=d.get("attention_pattern", "full"),
        attention_window=int(d.get("attention_window", 24)),
        alibi_slope=d.get("alibi_slope"),
        mask_self_attention=bool(d.get("mask_self_attention", False)),
        use_layernorm=bool(d.get("use_layernorm", False)),
        use_residual=bool(d.get("use_residual", False)),
        ffn="vfe",
        hidden_dim=int(d.get("hidden_dim", 64)),
        ffn_n_iterations=int(d.get("ffn_n_iterations", 1)),
        ffn_learnable_lr=bool(d.get("ffn_learnable_lr", True)),
        ffn_lambda_belief=float(d.get("ffn_lambda_belief", 1.0)),
        ffn_update_sigma=bool(d.get("ffn_update_sigma", True)),
        alpha=float(d.get("alpha", 0.001)),
        phi_lr=float(d.get("phi_lr", 0.05)),
        phi_max_norm=float(d.get("phi_max_norm", 3.14159)),
    )
    if out["pos_encoding_mode"] != "none" and int(d.get("gauge_dim", 3)) != 3:
        out["pos_composition"] = "add"
    return ModelConfig(**out)

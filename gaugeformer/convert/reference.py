"""Reference (PyTorch) state dict <-> gaugeformer parameters: a pure key mapper plus a value assigner.

The reference's keys (ref-architecture §9) map one to one onto :class:`GaugeTransformerLM` attributes::

    token_embed.base_mu                           -> embed.base_mu
    token_embed.phi_embed.weight                  -> embed.phi_embed
    pos_encoding.pos_phi                          -> pos_phi
    transformer.blocks.{l}.ffn.variational_ffn.lr -> blocks.{l}.ffn.lr
    transformer.blocks.{l}.norm1.weight           -> blocks.{l}.norm1.weight
    out_proj.weight                               -> out_proj
    ...

Generator buffers carry no information (they are fixed by the irreps); they are *checked* against ours.
"""

import numpy as np
from flax import nnx

from gaugeformer.config import ModelConfig
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.ops import so3

_TOP = {
    "token_embed.base_mu": ("embed", "base_mu"),
    "token_embed.base_log_sigma_diag": ("embed", "base_log_sigma_diag"),
    "token_embed.mu_embed.weight": ("embed", "mu_embed"),
    "token_embed.log_sigma_diag": ("embed", "log_sigma_diag"),
    "token_embed.phi_embed.weight": ("embed", "phi_embed"),
    "token_embed.pos_embed.weight": ("embed", "pos_embed"),
    "pos_encoding.pos_phi": ("pos_phi",),
    "transformer.final_norm.weight": ("final_norm", "weight"),
    "transformer.final_norm.bias": ("final_norm", "bias"),
    "out_proj.weight": ("out_proj",),
}

_BLOCK = {
    "ffn.variational_ffn.lr": ("ffn", "lr"),
    "norm1.weight": ("norm1", "weight"),
    "norm1.bias": ("norm1", "bias"),
    "norm2.weight": ("norm2", "weight"),
    "norm2.bias": ("norm2", "bias"),
    "ffn.learned_ffn.0.weight": ("ffn", "fc1_weight"),
    "ffn.learned_ffn.0.bias": ("ffn", "fc1_bias"),
    "ffn.learned_ffn.3.weight": ("ffn", "fc2_weight"),
    "ffn.learned_ffn.3.bias": ("ffn", "fc2_bias"),
}


def is_generator_key(key: str) -> bool:
    return key == "generators" or key.endswith((".generators", ".gen"))


def map_torch_key(key: str) -> tuple | None:
    """Reference key -> gaugeformer parameter path, ``None`` for generator buffers.

    >>> map_torch_key("transformer.blocks.1.ffn.variational_ffn.lr")
    ('blocks', 1, 'ffn', 'lr')
    """
    if is_generator_key(key):
        return None
    if key in _TOP:
        return _TOP[key]
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "transformer" and parts[1] == "blocks" and parts[2].isdigit():
        rest = ".".join(parts[3:])
        if rest in _BLOCK:
            return ("blocks", int(parts[2])) + _BLOCK[rest]
    raise KeyError(f"unknown reference state-dict key {key!r}")


def expected_generators(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The generator buffers a reference checkpoint of ``cfg`` must contain (reference basis)."""
    layout = cfg.layout
    glob = so3.block_generators(layout, "reference").astype(np.float32)
    out = {"generators": glob, "token_embed.generators": glob}
    for layer in range(cfg.n_layers):
        pre = f"transformer.blocks.{layer}"
        out[f"{pre}.ffn.variational_ffn.generators"] = glob
        for h, d in enumerate(layout.dims):
            out[f"{pre}.attention.head_generators.{h}.gen"] = so3.generators(d, "reference").astype(np.float32)
    return out


def check_generators(state_dict: dict, cfg: ModelConfig, atol: float = 1e-6) -> None:
    """Raise if a generator buffer in ``state_dict`` disagrees with the irreps of ``cfg``."""
    want = expected_generators(cfg)
    for key, value in state_dict.items():
        if not is_generator_key(key):
            continue
        if key not in want:
            raise ValueError(f"unexpected generator buffer {key!r} for irreps {cfg.irreps}")
        if value.shape != want[key].shape or not np.allclose(value, want[key], atol=atol):
            raise ValueError(
                f"generator buffer {key!r} (shape {value.shape}) does not match irreps {cfg.irreps} in the "
                f"reference basis (expected shape {want[key].shape}); the checkpoint was built from other irreps"
            )


def _to_e3nn_basis(path: tuple, value: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Re-express a reference-basis parameter in the e3nn basis (v_e3nn = Q v_ref per irrep block)."""
    q = so3.block_change_of_basis(cfg.layout).astype(value.dtype)
    name = path[-1]
    if name in ("base_mu",):
        return q @ value
    if name in ("mu_embed", "pos_embed", "out_proj"):
        return value @ q.T
    if name in ("base_log_sigma_diag", "log_sigma_diag"):
        v = value.reshape(-1, value.shape[-1])
        for off, d in zip(cfg.layout.offsets, cfg.layout.dims):
            if d > 1 and not np.allclose(v[:, off:off + d], v[:, off:off + 1]):
                raise ValueError(
                    f"{'.'.join(map(str, path))} is not isotropic within each irrep block, so its diagonal "
                    f"covariance has no diagonal e3nn-basis equivalent; convert with basis='reference'"
                )
        return value
    if name in ("weight", "bias") and "norm" in str(path[-2]):
        raise ValueError("LayerNorm acts per channel and is not basis independent; use basis='reference'")
    return value


def state_dict_to_params(state_dict: dict, cfg: ModelConfig) -> dict:
    """Map a reference state dict to a nested pure dict of gaugeformer parameters (and buffers).

    Tied ``out_proj.weight`` (the same tensor as ``mu_embed``) is dropped when ``cfg.tie_embeddings``.
    """
    check_generators(state_dict, cfg)
    out: dict = {}
    for key, value in state_dict.items():
        path = map_torch_key(key)
        if path is None or (cfg.tie_embeddings and path == ("out_proj",)):
            continue
        value = np.asarray(value, dtype=np.float32)
        if cfg.basis == "e3nn":
            value = _to_e3nn_basis(path, value, cfg)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def load_params(model: nnx.Module, params: dict) -> None:
    """Write ``params`` into ``model`` after checking that every key exists and every shape matches.

    All problems are reported together: missing keys, unexpected keys and shape mismatches.
    """
    state = nnx.state(model)
    have = dict(_flat(nnx.to_pure_dict(state)))
    given = dict(_flat(params))
    missing = sorted(".".join(map(str, k)) for k in have if k not in given)
    unexpected = sorted(".".join(map(str, k)) for k in given if k not in have)
    shapes = sorted(
        f"{'.'.join(map(str, k))}: checkpoint {np.shape(given[k])} vs model {np.shape(have[k])}"
        for k in given if k in have and np.shape(given[k]) != np.shape(have[k])
    )
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"missing keys: {missing}")
        if unexpected:
            lines.append(f"unexpected keys: {unexpected}")
        if shapes:
            lines.append(f"shape mismatches: {shapes}")
        raise ValueError("checkpoint does not fit the model config; " + "; ".join(lines))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def model_from_reference(state_dict: dict, cfg: ModelConfig, seed: int = 0):
    """Build a :class:`GaugeTransformerLM` for ``cfg`` and load a reference state dict into it."""
    model = GaugeTransformerLM(cfg, rngs=nnx.Rngs(seed))
    load_params(model, state_dict_to_params(state_dict, cfg))
    return model


# ---------------------------------------------------------------------------------------------
# The reverse direction: which reference keys (and shapes) a config implies
# ---------------------------------------------------------------------------------------------

_TOP_INV = {path: key for key, path in _TOP.items()}
_BLOCK_INV = {path: key for key, path in _BLOCK.items()}


class StateDictMismatchError(ValueError):
    """A reference state dict does not fit a model config (keys or shapes); lists every problem."""


def torch_key_of(path: tuple) -> str:
    """Gaugeformer parameter path -> reference state-dict key (inverse of :func:`map_torch_key`).

    >>> torch_key_of(("blocks", 1, "ffn", "lr"))
    'transformer.blocks.1.ffn.variational_ffn.lr'
    """
    path = tuple(path)
    if path in _TOP_INV:
        return _TOP_INV[path]
    if len(path) > 2 and path[0] == "blocks" and tuple(path[2:]) in _BLOCK_INV:
        return f"transformer.blocks.{int(path[1])}.{_BLOCK_INV[tuple(path[2:])]}"
    raise KeyError(f"no reference state-dict key for parameter path {path!r}")


def expected_reference_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every reference state-dict key a checkpoint of ``cfg`` holds, with its shape.

    Parameters and buffers come from an abstract (shape-only) :class:`GaugeTransformerLM`; generator
    buffers from :func:`expected_generators`.  With ``tie_embeddings`` the duplicate ``out_proj.weight``
    is included (the reference saves it; a de-duplicated safetensors export may omit it, as it may
    omit the shared generator buffers: :func:`check_state_dict` treats both as optional).
    """
    abstract = nnx.eval_shape(lambda: GaugeTransformerLM(cfg, rngs=nnx.Rngs(0)))
    out = {torch_key_of(path): tuple(np.shape(v))
           for path, v in _flat(nnx.to_pure_dict(nnx.state(abstract)))}
    out.update({k: tuple(v.shape) for k, v in expected_generators(cfg).items()})
    if cfg.tie_embeddings:
        out["out_proj.weight"] = (cfg.vocab_size, cfg.embed_dim)
    return out


def check_state_dict(state_dict: dict, cfg: ModelConfig, source: str = "the config") -> None:
    """Raise :class:`StateDictMismatchError` listing every missing, unexpected and wrong-shape key.

    Args:
      state_dict: reference state dict (``{key: array}``).
      cfg: the model config it should fit.
      source: where ``cfg`` came from, for the message.
    """
    want = expected_reference_shapes(cfg)
    # generator buffers carry no information (a de-duplicating export keeps one of the shared ones)
    optional = {k for k in want if is_generator_key(k)}
    if cfg.tie_embeddings:
        optional.add("out_proj.weight")
    missing = [k for k in want if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in want]
    shapes = [f"{k}: checkpoint {tuple(np.shape(v))} vs config {want[k]}"
              for k, v in state_dict.items() if k in want and tuple(np.shape(v)) != want[k]]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", shapes)):
        if items:
            parts.append(f"{len(items)} {what} key{'s' if len(items) > 1 else ''} [{'; '.join(items)}]")
    raise StateDictMismatchError(
        f"the checkpoint's weights do not match the model config from {source}: " + ", ".join(parts)
        + "; fix: pass a --config that matches the checkpoint (or omit it to infer one)")

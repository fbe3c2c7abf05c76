"""Audit and emulate matmul precision from jaxprs (XLA's CPU backend ignores precision, so check structure).

* :func:`dot_generals` lists every ``dot_general`` of a function's jaxpr, nested jaxprs included (``jit``,
  ``scan``, ``while``, ``cond``, ``checkpoint``/remat, ``custom_jvp``/``custom_vjp``), with its precision
  and name scope.
* :func:`emulate` re-traces a function's jaxpr (under ``jax.jit``) with the operands of low-precision contractions
  rounded as an accelerator would: to bfloat16 (a TPU's single-pass default) or to TF32 (an A100/H100's
  default for float32 GEMMs).  Contractions pinned to ``Precision.HIGHEST`` keep their operands unless
  ``respect_precision=False``, which shows what the model would compute if it had left precision to the
  platform.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

Rounding = Literal["bf16", "tf32"]
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class DotInfo:
    """One ``dot_general``: its precision (per operand), operand shapes, name scope and nesting path."""

    precision: tuple
    shapes: tuple[tuple[int, ...], ...]
    scope: str
    path: tuple[str, ...]

    @property
    def full(self) -> bool:
        return all(p == HIGHEST for p in self.precision)


def _precisions(params) -> tuple:
    p = params.get("precision")
    if p is None:
        return (None, None)
    if isinstance(p, tuple):
        return tuple(p)
    return (p, p)


def _sub_jaxprs(params) -> Iterator[tuple[str, jcore.Jaxpr]]:
    for name, value in params.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, jcore.ClosedJaxpr):
                yield name, v.jaxpr
            elif isinstance(v, jcore.Jaxpr):
                yield name, v


def _walk(jaxpr: jcore.Jaxpr, path: tuple[str, ...]) -> Iterator[DotInfo]:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield DotInfo(_precisions(eqn.params), tuple(tuple(v.aval.shape) for v in eqn.invars),
                          str(eqn.source_info.name_stack), path)
        for name, sub in _sub_jaxprs(eqn.params):
            yield from _walk(sub, path + (f"{eqn.primitive.name}.{name}",))


def dot_generals(fn: Callable, *args, **kwargs) -> list[DotInfo]:
    """Every ``dot_general`` in ``jax.make_jaxpr(fn)(*args, **kwargs)``, nested jaxprs included."""
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return list(_walk(closed.jaxpr, ()))


# ----------------------------------------------------------------------------------------------
# emulation
# ----------------------------------------------------------------------------------------------


def round_operand(x: jax.Array, rounding: Rounding) -> jax.Array:
    """Round float32 values to bfloat16 (8 significant bits) or TF32 (11), nearest-even, kept as float32."""
    if x.dtype != jnp.float32:
        return x
    if rounding == "bf16":
        return x.astype(jnp.bfloat16).astype(jnp.float32)
    if rounding == "tf32":
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        drop = 13  # float32 keeps 23 mantissa bits, TF32 10
        bias = jnp.uint32((1 << (drop - 1)) - 1) + ((bits >> drop) & 1)
        rounded = (bits + bias) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
        keep = jnp.isfinite(x)
        return jnp.where(keep, jax.lax.bitcast_convert_type(rounded, jnp.float32), x)
    raise ValueError(f"rounding={rounding!r}; expected 'bf16' or 'tf32'")


def emulate(fn: Callable, rounding: Rounding, respect_precision: bool = True) -> Callable:
    """``fn`` re-traced equation by equation, low-precision ``dot_general`` operands rounded (module doc)."""

    def run(*args, **kwargs):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args, **kwargs)
        flat = jax.tree.leaves((args, kwargs))
        out = jax.jit(lambda *a: _eval(closed.jaxpr, closed.consts, a, rounding, respect_precision))(*flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return run


def _eval(jaxpr: jcore.Jaxpr, consts, args, rounding: Rounding, respect: bool) -> list:
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        inv = [read(v) for v in eqn.invars]
        outs = _eval_eqn(eqn, inv, rounding, respect)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for v, x in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _closed(cj, args, rounding, respect):
    if isinstance(cj, jcore.ClosedJaxpr):
        return _eval(cj.jaxpr, cj.consts, args, rounding, respect)
    return _eval(cj, [], args, rounding, respect)


def _scan_split(p) -> tuple[int, int]:
    """``(number of consts, number of carries)`` of a scan equation."""
    if "num_consts" in p:
        return p["num_consts"], p["num_carry"]
    consts, carry, _ = p["ft_in"].unpack()  # jax >= 0.10: operands are (consts, carry, xs)
    return len(tuple(consts.vals)), len(tuple(carry.vals))


# jax's own linear algebra pins Precision.HIGHEST inside (jnp.linalg.solve / inv): left as it is
_OPAQUE = ("custom_linear_solve",)
_CUSTOM = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")


def _contains_dot(params) -> bool:
    return any(True for _, sub in _sub_jaxprs(params) for _ in _walk(sub, ()))


def _eval_eqn(eqn, inv, rounding, respect):
    """One equation; higher-order ones are interpreted only when they contain a contraction."""
    name, p = eqn.primitive.name, eqn.params
    if name in _CUSTOM and not _contains_dot(p):  # re-binding needs the rule's traced functions: run its primal
        out = _closed(p.get("call_jaxpr") or p.get("fun_jaxpr"), inv, rounding, respect)
        return out if eqn.primitive.multiple_results else out[0]
    if name in _OPAQUE or (name != "dot_general" and not _contains_dot(p)):
        return eqn.primitive.bind(*inv, **p)
    if name == "dot_general":
        if not (respect and all(q == HIGHEST for q in _precisions(p))):
            inv = [round_operand(jnp.asarray(x), rounding) for x in inv]
        return eqn.primitive.bind(*inv, **p)
    if name in ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint", "custom_jvp_call",
                "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"):
        sub = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
        if sub is not None:
            out = _closed(sub, inv, rounding, respect)
            return out if eqn.primitive.multiple_results else out[0]
    if name == "while":
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, carry = inv[:nc], inv[nc:nc + nb], inv[nc + nb:]
        return jax.lax.while_loop(
            lambda c: _closed(p["cond_jaxpr"], cconsts + list(c), rounding, respect)[0],
            lambda c: _closed(p["body_jaxpr"], bconsts + list(c), rounding, respect), carry)
    if name == "cond":
        branches = [lambda *ops, br=br: _closed(br, list(ops), rounding, respect) for br in p["branches"]]
        return jax.lax.switch(inv[0], branches, *inv[1:])
    if name == "scan":
        nconst, ncarry = _scan_split(p)
        consts, carry, xs = inv[:nconst], inv[nconst:nconst + ncarry], inv[nconst + ncarry:]

        def body(c, x):
            out = _closed(p["jaxpr"], consts + list(c) + list(x), rounding, respect)
            return out[:ncarry], out[ncarry:]

        carry, ys = jax.lax.scan(body, carry, xs, length=p["length"], reverse=p["reverse"])
        return list(carry) + list(ys)
    if _contains_dot(p):
        raise NotImplementedError(f"emulate: contractions inside {name!r} are not handled")
    return eqn.primitive.bind(*inv, **p)


def max_relative_change(a, b) -> float:
    """``max|a - b| / max|b|`` over finite entries (a scale-free size of a perturbation)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a - b)[ok].max() / max(np.abs(b[ok]).max(), 1e-30))

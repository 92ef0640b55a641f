"""``tropfx.compile``: trace a copy of the model, run a literal list of passes, verify, report."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY as _PRESERVED
from torch.utils._pytree import tree_flatten

from tropfx.errors import InputError, PassError, VerificationError
from tropfx.measure import (
    clone_inputs,
    count_active_params,
    count_params,
    describe_inputs,
    eval_mode,
    measure,
)
from tropfx.pass_base import PassInfo, PassResult, PassStats, pass_info
from tropfx.report import Report, StageRow
from tropfx.tracing import trace
from tropfx.verify import compare, default_tolerance

__all__ = ["compile"]

Pass = Callable[[fx.GraphModule], Any]


def compile(  # noqa: A001 - the public name is tropfx.compile, like torch.compile
    model: nn.Module,
    passes: Sequence[Pass],
    *,
    example_inputs: Any = None,
    verify: bool | None = None,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> fx.GraphModule:
    """Trace a copy of ``model`` and run ``passes`` over it in order; ``model`` is never modified.

    Args:
        model: the ``nn.Module`` to compile.
        passes: passes to run in order, e.g. ``[tropfx.passes.fuse_batchnorm()]``; each is a
            callable ``GraphModule -> PassResult``.
        example_inputs: a tensor or tuple of positional inputs. With them every stage is run once
            (eval mode, no grad) for shapes (``node.meta["tensor_meta"]``), MACs and outputs.
        verify: compare each stage's outputs with the previous stage's on ``example_inputs``
            (default: on when they are given). A pass declared exact that exceeds its tolerance
            raises :class:`VerificationError`; a lossy pass has its error recorded.
        leaf_modules: submodule names or types to keep as opaque calls.
        concrete_args: forwarded to ``torch.fx.Tracer.trace``.
        evaluate: ``fn(module) -> {"acc": ...}``, called on each stage in eval mode; its values
            become report columns.

    Returns:
        The compiled ``torch.fx.GraphModule``; ``.graph`` is its graph, ``.report`` the
        :class:`tropfx.report.Report` with one row per stage.
    """
    if not isinstance(model, nn.Module):
        raise InputError(
            f"tropfx.compile expects an nn.Module, got {type(model).__name__}; "
            "wrap a function in a Module whose forward calls it"
        )
    passes = list(passes)
    for i, p in enumerate(passes):
        if not callable(p):
            raise InputError(
                f"passes[{i}] is a {type(p).__name__}, not a pass; configure passes by calling "
                "their factory, e.g. passes=[tropfx.passes.fuse_batchnorm()]"
            )
    inputs = _as_inputs(example_inputs)
    verify = inputs is not None if verify is None else verify
    if verify and inputs is None:
        raise InputError("verify=True needs example_inputs=(x,) to run the model on")

    start = time.perf_counter()
    work = _private_copy(model)
    gm, leaves = trace(work, leaf_modules=leaf_modules, concrete_args=concrete_args)
    gm.training = model.training
    report = Report(model=type(model).__name__, leaves=leaves,
                    inputs=describe_inputs(inputs) if inputs is not None else "")
    row = StageRow("traced", exact=None, modified=False,
                   seconds=time.perf_counter() - start)
    reference = _measure_stage(gm, row, inputs, evaluate)
    if verify:  # tracing is a rewrite too: it can freeze Python-level behaviour of forward
        with eval_mode(work):
            eager = work(*clone_inputs(inputs))
        _verify(_TRACING, eager, reference, row, [])
    report.rows.append(row)

    done: list[str] = []
    for p in passes:
        info = pass_info(p)
        t0 = time.perf_counter()
        result = _run_pass(p, info, gm, done)
        gm = result.graph_module
        row = StageRow(info.name, info.exact, result.modified, result.stats.rewritten,
                       result.stats.skipped, info=result.stats.info,
                       seconds=time.perf_counter() - t0)
        output = _measure_stage(gm, row, inputs, evaluate)
        if verify:
            _verify(info, reference, output, row, done)
        reference = output
        report.rows.append(row)
        done.append(info.name)

    report.seconds = time.perf_counter() - start
    gm.report = report
    # GraphModule.__deepcopy__ keeps only listed attributes; this is the list (torch.ao uses it too).
    gm.meta.setdefault(_PRESERVED, {})["report"] = report
    return gm


_TRACING = PassInfo("tracing", exact=True, rtol=None, atol=None)


def _as_inputs(example_inputs: Any) -> tuple | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a tensor or a tuple of positional inputs, "
        f"got {type(example_inputs).__name__}"
    )


def _private_copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise InputError(
            f"could not copy {type(model).__name__} ({type(exc).__name__}: {exc}); tropfx works on "
            "a deep copy so that your model is never modified: make the model deep-copyable"
        ) from exc


def _run_pass(p: Pass, info: PassInfo, gm: fx.GraphModule, done: list[str]) -> PassResult:
    """Run one pass and check what it returned: a valid, linted, recompiled graph module."""
    where = f"pass {info.name} failed after [{', '.join(done)}]"
    try:
        raw = p(gm)
    except Exception as exc:
        raise PassError(f"{where}: {type(exc).__name__}: {exc}") from exc
    if not (hasattr(raw, "graph_module") and hasattr(raw, "modified")):
        what = "a GraphModule" if isinstance(raw, fx.GraphModule) else type(raw).__name__
        raise PassError(
            f"{where}: it returned {what}; a pass must return "
            "tropfx.PassResult(graph_module, modified, stats)"
        )
    if not isinstance(raw.graph_module, fx.GraphModule):
        raise PassError(f"{where}: its graph_module is a {type(raw.graph_module).__name__}")
    result = PassResult(raw.graph_module, bool(raw.modified),
                        PassStats.coerce(getattr(raw, "stats", None)))
    out = result.graph_module
    try:
        out.graph.lint()
        out.recompile()
    except Exception as exc:
        raise PassError(f"{where}: it left an invalid graph: {exc}") from exc
    if result.modified:
        out.delete_all_unused_submodules()  # e.g. a BatchNorm folded away
    return result


def _measure_stage(gm: fx.GraphModule, row: StageRow, inputs: tuple | None,
                   evaluate: Callable | None) -> Any:
    """Fill the row's sizes and metrics; return the stage's outputs on the inputs (or None)."""
    row.params = count_params(gm)
    row.active_params = count_active_params(gm)
    output = None
    if inputs is not None:
        m = measure(gm, inputs)
        row.macs, row.counts, output = m.macs, m.counts, m.output
    if evaluate is not None:
        with eval_mode(gm):
            row.metrics = dict(evaluate(gm))
    return output


def _verify(info: PassInfo, reference: Any, output: Any, row: StageRow, done: list[str]) -> None:
    dtypes = [t.dtype for t in tree_flatten(reference)[0] if isinstance(t, torch.Tensor)]
    rtol, atol = default_tolerance(dtypes[0] if dtypes else torch.float32)
    rtol = info.rtol if info.rtol is not None else rtol
    atol = info.atol if info.atol is not None else atol
    result = compare(reference, output, rtol=rtol, atol=atol)
    row.max_abs_err, row.max_rel_err = result.max_abs, result.max_rel
    if info.exact and not result.within:
        if info is _TRACING:
            what = "tracing with torch.fx changed the outputs of the model"
            hint = ("forward has Python-level behaviour that tracing froze (a branch on a value, "
                    "non-torch randomness, global state): keep the submodule responsible as a "
                    "leaf with leaf_modules=[...]")
        else:
            what = f"pass {info.name} (after [{', '.join(done)}]) is declared exact but changed them"
            hint = "this is a bug in the pass; please report it with the model"
        raise VerificationError(
            f"{what}: {result.worst} differs by max abs err {result.max_abs:.3g}, max rel err "
            f"{result.max_rel:.3g} > rtol {rtol:g} (atol {atol:g}) on the example inputs "
            f"{result.detail}. Likely cause: {hint}. verify=False skips the check."
        )

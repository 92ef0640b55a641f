"""``tropfx.compile``: trace a copy of the model, run a literal list of passes, verify, report."""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _USER_PRESERVED_ATTRIBUTES_KEY as _PRESERVED
from torch.nn.modules.lazy import LazyModuleMixin
from torch.utils._pytree import tree_flatten

from tropfx.errors import InputError, PassError, VerificationError
from tropfx.hooks import carry_hooks
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
from tropfx.verify import VerificationWarning, compare, default_ntol, default_tolerance

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

    Verification is element-wise (:mod:`tropfx.verify`). It proves little when the example outputs
    do not depend on the inputs (a random-init network whose activations have collapsed): when
    the outputs' rows are identical across a batch of different inputs, or the outputs do not
    change on a second random draw of the inputs, the traced row's ``info["verification"]`` and
    the printed report say it was inconclusive, and one :class:`tropfx.verify.VerificationWarning`
    is issued.

    The global random number generators (CPU and CUDA) are left as they were: whatever the
    passes draw comes from a forked state. Submodules with forward / backward hooks are kept as
    leaves; a pass that removes or replaces such a module fails with a :class:`PassError`. The
    model's own hooks (forward, forward-pre, backward) are carried over to the compiled module,
    which takes the same inputs and returns the model's outputs; they receive the compiled module
    as their module argument, and they run whenever compile runs a stage on the example inputs.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        return _compile(model, passes, example_inputs, verify, leaf_modules, concrete_args,
                        evaluate)


def _compile(model: nn.Module, passes: Sequence[Pass], example_inputs: Any, verify: bool | None,
             leaf_modules: Iterable[str | type[nn.Module]], concrete_args: dict[str, Any] | None,
             evaluate: Callable | None) -> fx.GraphModule:
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
    _check_model(model)
    inputs = _as_inputs(example_inputs)
    if inputs is not None:
        _check_arity(model, inputs)
    verify = inputs is not None if verify is None else verify
    if verify and inputs is None:
        raise InputError("verify=True needs example_inputs=(x,) to run the model on")

    start = time.perf_counter()
    work = _private_copy(model)
    # a hooked submodule stays a call_module node, so that its hooks run (tracing through it
    # would drop them) and the hook check below can see a pass remove it
    hooked = [path for path, m in work.named_modules() if path and _hook_kinds(m)]
    gm, leaves = trace(work, leaf_modules=[*leaf_modules, *hooked], concrete_args=concrete_args)
    gm.training = model.training
    carry_hooks(work, gm)  # tracing calls work.forward, so the root's own hooks are not in the graph
    report = Report(model=type(model).__name__, leaves=leaves,
                    inputs=describe_inputs(inputs) if inputs is not None else "")
    row = StageRow("traced", exact=None, modified=False,
                   seconds=time.perf_counter() - start)
    reference = _measure_stage(gm, row, inputs, evaluate)
    if verify:  # tracing is a rewrite too: it can freeze Python-level behaviour of forward
        with eval_mode(work):  # forward, not __call__: the stages run the graph, without the
            eager = work.forward(*clone_inputs(inputs))  # root hooks (carried over unchanged)
        _verify(_TRACING, eager, reference, row, [])
        why = _inconclusive(gm, inputs, reference)
        if why:
            row.info["verification"] = f"inconclusive: {why}"
            warnings.warn(
                f"tropfx.compile: verification of {type(model).__name__} is inconclusive: {why}, "
                "so equal outputs prove little. Verify on inputs the outputs depend on (a trained "
                "model, or real data)", VerificationWarning, stacklevel=3)
    report.rows.append(row)

    done: list[str] = []
    for p in passes:
        info = pass_info(p)
        t0 = time.perf_counter()
        result = _run_pass(p, info, gm, done)
        gm = result.graph_module
        carry_hooks(work, gm)  # a pass may return a new GraphModule; keyed by handle, so idempotent
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
    hooked = _called_hooked_modules(gm)
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
    # a module is lost when its hooks no longer run: neither it nor a replacement that carries
    # the same hook functions over is called any more
    running = {h for hooks, _, _ in _called_hooked_modules(out).values() for h in hooks}
    lost = {path: kinds for hooks, path, kinds in hooked.values() if not hooks <= running}
    if lost:
        named = ", ".join(f"module {path!r} ({kinds} hooks)" for path, kinds in lost.items())
        raise PassError(
            f"{where}: it removed or replaced {named}, "
            "whose hooks would silently no longer run; the pass should skip hooked modules (please "
            "report it), or remove the hooks before compiling and add them to the result"
        )
    if result.modified:
        out.delete_all_unused_submodules()  # e.g. a BatchNorm folded away
    return result


def _hook_kinds(module: nn.Module) -> str:
    kinds = [kind for kind, hooks in (("forward", module._forward_hooks),
                                      ("forward pre", module._forward_pre_hooks),
                                      ("backward", module._backward_hooks),
                                      ("backward pre", module._backward_pre_hooks)) if hooks]
    return " and ".join(kinds)


def _called_hooked_modules(gm: fx.GraphModule) -> dict[int, tuple[frozenset, str, str]]:
    """``id(module) -> (ids of its hook functions, path, hook kinds)`` of the hooked modules that
    the graph calls."""
    called = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            try:
                module = gm.get_submodule(node.target)
            except AttributeError:
                continue  # the lint reports a call of a missing module
            if _hook_kinds(module):
                hooks = frozenset(id(h) for d in (module._forward_hooks, module._forward_pre_hooks,
                                                  module._backward_hooks,
                                                  module._backward_pre_hooks) for h in d.values())
                called[id(module)] = (hooks, node.target, _hook_kinds(module))
    return called


def _check_model(model: nn.Module) -> None:
    """Refuse models that cannot be run or copied meaningfully, naming the module and the fix."""
    for path, module in model.named_modules():
        where = f"module {path!r} ({type(module).__name__})" if path else type(module).__name__
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise InputError(f"{where} has uninitialized (lazy) parameters; run the model once on "
                             "an input, model(x), so that their shapes are known, then compile")
        for name, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if t is not None and t.device.type == "meta":
                raise InputError(f"{where} has {name!r} on the meta device, without values; "
                                 "materialize the model first (model.to_empty(device='cpu') and "
                                 "load_state_dict(...))")


def _check_arity(model: nn.Module, inputs: tuple) -> None:
    """Too many example inputs for ``model.forward``, as an InputError (not forward's TypeError)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return  # a builtin forward: the run itself will tell
    try:
        signature.bind_partial(*inputs)  # too few may be fine: concrete_args, defaults
    except TypeError as exc:
        raise InputError(
            f"example_inputs has {len(inputs)} positional input(s) but "
            f"{type(model).__name__}.forward{signature} does not take them ({exc}); pass one "
            "tensor per positional argument of forward, e.g. example_inputs=(x,)"
        ) from exc


def _inconclusive(gm: fx.GraphModule, inputs: tuple, output: Any) -> str:
    """Why equal outputs on ``inputs`` would prove little, or ''.

    Rows identical across a batch whose input rows differ, or (without such a batch) outputs
    unchanged when the float inputs are redrawn at random (a private generator: the global RNG
    is not touched)."""
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    floats = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not outs or not floats:
        return ""
    batch = floats[0].shape[0] if floats[0].dim() else 0
    if batch >= 2 and any(not _rows_equal(t) for t in floats if t.dim() and t.shape[0] == batch):
        batched = [t for t in outs if t.dim() and t.shape[0] == batch]
        if batched and all(_rows_equal(t) for t in batched):
            return f"every output row is the same for the {batch} different input rows"
        return ""
    gen = torch.Generator().manual_seed(0)
    redrawn = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            spread = float(t.float().std()) if t.numel() > 1 else 1.0
            spread = spread if spread > 0 and spread == spread and spread != float("inf") else 1.0
            t = (torch.randn(t.shape, generator=gen) * spread).to(t.dtype).to(t.device)
        redrawn.append(t)
    try:
        with eval_mode(gm), torch.no_grad():
            again = gm(*clone_inputs(tuple(redrawn)))
    except Exception:  # the model rejects random inputs (e.g. it checks their values): no verdict
        return ""
    again_outs = [t for t in tree_flatten(again)[0] if isinstance(t, torch.Tensor)]
    if len(again_outs) == len(outs) and all(a.shape == b.shape and torch.equal(a, b)
                                            for a, b in zip(outs, again_outs, strict=True)):
        return "the outputs did not change when the inputs were redrawn at random"
    return ""


def _rows_equal(t: torch.Tensor) -> bool:
    rows = t.detach().reshape(t.shape[0], -1)
    same = (rows == rows[:1]) | (rows.isnan() & rows[:1].isnan()) if t.is_floating_point() \
        else rows == rows[:1]
    return bool(same.all())


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
    dtype = dtypes[0] if dtypes else torch.float32
    rtol, atol = default_tolerance(dtype)
    rtol = info.rtol if info.rtol is not None else rtol
    atol = info.atol if info.atol is not None else atol
    ntol = default_ntol(dtype)
    result = compare(reference, output, rtol=rtol, atol=atol, ntol=ntol)
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
            f"{what}: {result.element()} is outside |new - ref| <= atol + rtol * |ref| + ntol * "
            f"max|ref| (rtol {rtol:g}, atol {atol:g}, ntol {ntol:g}) on the example inputs "
            f"{result.detail}(max abs err {result.max_abs:.3g}, max rel err {result.max_rel:.3g}). "
            f"Likely cause: {hint}. verify=False skips the check."
        )

"""One operator contract: the C++ meta functions (kernels/csrc/contract.h), which both bindings
call, agree with the Python fakes (kernels/ops.py) that torch.compile / torch.export trace with,
on every operator and on the shapes of the kernel tests; and the schemas are one list
(kernels/csrc/schemas.h) registered by the library, the debug namespace and the CUDA emulator.

The meta functions are exposed as ``torch.ops.tropfx_contract.<op>`` (Meta tensors in and out).
"""

from __future__ import annotations

import functools
import itertools
import os

import pytest
import torch
from index_cases import CASES
from test_cuda_kernels import BOOL_CONV, DENSE, MORPH, SPARSE
from test_kernels_cpu import DENSE_SHAPES, MORPH_CASES, SPARSE_CASES

from tropfx.kernels import OPS, _build
from tropfx.kernels.ops import _FAKES

F32, F64, I32, I64, U64 = torch.float32, torch.float64, torch.int32, torch.int64, torch.uint64


@pytest.fixture(scope="module", autouse=True)
def library():
    if not _build.load():
        pytest.skip(f"C++ kernels unavailable: {_build.build_info()['error']}")


def meta(shape, dtype=F32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _dense():
    for (B, K, M), dtype, bias, with_argmax in itertools.product(
            [*DENSE, *DENSE_SHAPES], (F32, F64), (False, True), (False, True)):
        b = meta((M,), dtype) if bias else None
        yield "maxplus", (meta((B, K), dtype), meta((M, K), dtype), b, False, with_argmax)
        yield "maxplus", (meta((2, B, K), dtype), meta((M, K), dtype), b, True, with_argmax)
        yield "maxplus_backward", (meta((B, M), dtype), meta((B, M), I32), K, bias, False)


def _sparse():
    for (xshape, dim, out, k), dtype, bias in itertools.product(
            [*SPARSE, *SPARSE_CASES], (F32, F64), (False, True)):
        b = meta((out,), dtype) if bias else None
        index, value = meta((out, k), I64), meta((out, k), dtype)
        for with_argmax in (False, True):
            yield "sparse_maxplus", (meta(xshape, dtype), index, value, b, dim, False, with_argmax)
        yshape = list(xshape)
        yshape[dim] = out
        yield "sparse_maxplus_backward", (meta(yshape, dtype), meta(yshape, I32), index,
                                          xshape[dim], dim, bias, True)


def _morph():
    cases = list(MORPH_CASES)
    for x, (kh, kw), stride, padding, dilation, ceil_mode in MORPH:
        cases += [(x, (x[1], kh, kw), stride, padding, dilation, ceil_mode),
                  (x, (5, x[1], kh, kw), stride, padding, dilation, ceil_mode)]
    for (x, w, stride, padding, dilation, ceil_mode), name in itertools.product(
            cases, ("dilation2d", "erosion2d")):
        args = (meta(x), meta(w), list(stride), list(padding), list(dilation), ceil_mode)
        yield name, (*args, False)
        y, _ = getattr(torch.ops.tropfx_contract, name)(*args, True)
        yield f"{name}_backward", (meta(y.shape), meta(y.shape, I32), list(x), list(w),
                                   list(stride), list(padding), list(dilation))


def _bits():
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, I32, I64, torch.float16,
              torch.bfloat16, F32, F64]
    for shape, dtype in itertools.product([(2, 3, 4, 5), (2, 130, 3, 2), (1, 64, 1, 1)], dtypes):
        yield "pack_bits", (meta(shape, dtype),)
        n, c, h, w = shape
        yield "unpack_bits", (meta((n, h, w, -(-c // 64)), U64), c, dtype)
    yield "unpack_bits", (meta((1, 2, 2, 3), U64), 130, None)
    for n, c, h, w, o, kh, kw, stride, padding, dilation, (lo, hi) in BOOL_CONV:
        words = -(-c // 64)
        pos = meta((o, kh, kw, max(hi, 0).bit_length(), words), U64)
        neg = meta((o, kh, kw, max(-lo, 0).bit_length(), words), U64)
        for t in (I64, I32):
            yield "bool_conv2d", (meta((n, h, w, words), U64), pos, neg, meta((o,), t), list(stride),
                                  list(padding), list(dilation))
    for (n, c, h, w, kh, kw, stride, padding, dilation), name in itertools.product(
            [(2, 3, 7, 8, 3, 3, (1, 1), (1, 1), (1, 1)), (1, 70, 6, 5, 2, 3, (2, 1), (0, 1), (2, 1)),
             (1, 128, 4, 4, 3, 3, (1, 1), (1, 1), (1, 1))],
            ("binary_dilation2d", "binary_erosion2d")):
        yield name, (meta((n, h, w, -(-c // 64)), U64), meta((c, kh, kw), torch.bool), list(stride),
                     list(padding), list(dilation))


@functools.cache
def calls() -> tuple:
    """(op, args) of every comparison (built once; the morphology backward's grad sizes come
    from the forward's meta function)."""
    return (*_dense(), *_sparse(), *_morph(), *_bits())


def _outputs(out) -> list[tuple]:
    out = out if isinstance(out, tuple | list) else (out,)
    return [(tuple(t.shape), t.dtype) for t in out]


def test_every_operator_is_compared():
    assert {op for op, _ in calls()} == set(OPS) == set(_FAKES)


@pytest.mark.parametrize("op", OPS)
def test_fakes_match_the_meta_functions(op):
    """Output shapes and dtypes of the Python fake and of the C++ meta function, call by call."""
    mine = [args for name, args in calls() if name == op]
    assert mine
    for args in mine:
        want = _outputs(getattr(torch.ops.tropfx_contract, op)(*args))
        got = _outputs(_FAKES[op](*args))
        assert got == want, f"{op}{[getattr(a, 'shape', a) for a in args]}: fake {got}, meta {want}"


# The refusals a meta function can see (shapes, dtypes, sizes, windows): every bad case of the
# index tests except the data-dependent ones ("holds": index and argmax values).
SHAPE_CASES = [c for c in CASES if c.expect is not None and "holds" not in c.expect]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.id for c in SHAPE_CASES])
def test_meta_functions_refuse_what_the_kernels_refuse(case):
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in case.args()]
    with pytest.raises((RuntimeError, IndexError)) as info:
        getattr(torch.ops.tropfx_contract, case.op)(*args)
    assert f"tropfx::{case.op}" in str(info.value) and case.expect in str(info.value)


def _schemas(namespace: str) -> dict[str, str]:
    ops = getattr(torch.ops, namespace)
    return {op: str(getattr(ops, op).default._schema).split("::", 1)[1] for op in OPS}


def test_one_schema_source():
    """The library, the contract namespace (and the CUDA emulator, where built) register the same
    schemas, from kernels/csrc/schemas.h."""
    assert _schemas("tropfx_contract") == _schemas("tropfx")
    if os.environ.get("TROPFX_CUDA_EMULATION") == "1":
        from tropfx.kernels.cuda_build import build_emulation

        build_emulation()
        assert _schemas("tropfx_emu") == _schemas("tropfx")

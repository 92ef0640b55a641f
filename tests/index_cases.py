"""Out-of-range index, argmax and size arguments for every ``torch.ops.tropfx`` operator.

Run by ``tests/test_kernel_indices.py`` in a child process, because before the checks some of these
calls crashed the process (a segfault) or wrote out of bounds:
``python tests/index_cases.py BACKEND FIRST`` runs the cases from ``FIRST`` on and prints one JSON
line when a case starts and one when it ends; a crash leaves a case started and not ended, and the
parent resumes after it. BACKEND: ``cpu`` (torch.ops.tropfx on CPU tensors), ``emulated`` (the CUDA
binding and kernels in the CPU emulator, torch.ops.tropfx_emu) or ``cuda`` (torch.ops.tropfx on a GPU).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

I32, I64, U64 = torch.int32, torch.int64, torch.uint64
BIG = 2**40


@dataclass(frozen=True)
class Case:
    op: str
    what: str
    args: Callable[[], tuple]  # CPU tensors; moved to the backend's device
    expect: str | None  # a substring of the error (with the bad value); None: must succeed

    @property
    def id(self) -> str:
        return f"{self.op}: {self.what}"


def _full(shape, value, dtype=I32):
    return torch.full(shape, value, dtype=dtype)


def _dense_backward(argmax=0, k=5, grad=(4, 3), arg_dtype=I32, arg_shape=None):
    return lambda: (torch.randn(grad), _full(arg_shape or grad, argmax, arg_dtype), k, False, False)


def _sparse(index=0, dim=-1, index_dtype=I64, value_shape=(3, 2)):
    return lambda: (torch.randn(4, 6), _full((3, 2), index, index_dtype), torch.randn(value_shape),
                    None, dim, False, True)


def _sparse_backward(argmax=0, index=0, n_in=6, dim=-1, out=3):
    return lambda: (torch.randn(4, 3), _full((4, 3), argmax), _full((out, 2), index, I64), n_in, dim,
                    False, False)


def _morph(stride=(1, 1), padding=(0, 0), dilation=(1, 1), weight=(2, 3, 3)):
    return lambda: (torch.randn(1, 2, 5, 5), torch.randn(weight), list(stride), list(padding),
                    list(dilation), False, True)


def _morph_backward(argmax=0, input_size=(1, 2, 5, 5), weight_size=(2, 3, 3), grad=(1, 2, 3, 3),
                    stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    return lambda: (torch.randn(grad), _full(grad, argmax), list(input_size), list(weight_size),
                    list(stride), list(padding), list(dilation))


def _bool_conv(stride=(1, 1), padding=(0, 0), dilation=(1, 1), pos=(2, 3, 3, 1, 1),
               neg=(2, 3, 3, 0, 1), threshold=(2,), threshold_dtype=I64):
    return lambda: (_full((1, 5, 5, 1), 5, U64), _full(pos, 3, U64), _full(neg, 1, U64),
                    _full(threshold, 2, threshold_dtype), list(stride), list(padding), list(dilation))


def _bit_morph(stride=(1, 1), padding=(0, 0), dilation=(1, 1), se=(3, 3, 3), se_dtype=torch.bool):
    return lambda: (_full((1, 5, 5, 1), 5, U64), torch.ones(se, dtype=se_dtype), list(stride),
                    list(padding), list(dilation))


CASES: list[Case] = [
    # maxplus: the sizes its argmax must fit
    Case("maxplus", "valid", lambda: (torch.randn(3, 4), torch.randn(5, 4), None), None),
    Case("maxplus", "in_features 0", lambda: (torch.randn(3, 0), torch.randn(5, 0), None),
         "in_features is 0"),
    Case("maxplus", "x does not fit weight", lambda: (torch.randn(3, 4), torch.randn(5, 3), None),
         "must fit weight"),
    Case("maxplus", "bias of the wrong size",
         lambda: (torch.randn(3, 4), torch.randn(5, 4), torch.randn(4)), "bias must be (5)"),
    # maxplus_backward: argmax in [-1, in_features)
    Case("maxplus_backward", "valid", _dense_backward(argmax=4), None),
    Case("maxplus_backward", "bias argmax -1", _dense_backward(argmax=-1), None),
    Case("maxplus_backward", "argmax 2**30", _dense_backward(argmax=2**30), "holds 1073741824"),
    Case("maxplus_backward", "argmax = in_features", _dense_backward(argmax=5), "holds 5"),
    Case("maxplus_backward", "argmax -2", _dense_backward(argmax=-2), "holds -2"),
    Case("maxplus_backward", "argmax int32 min", _dense_backward(argmax=-2**31), "holds -2147483648"),
    Case("maxplus_backward", "in_features -1", _dense_backward(k=-1), "in_features is -1"),
    Case("maxplus_backward", "in_features 0", _dense_backward(k=0), "in_features is 0"),
    Case("maxplus_backward", "in_features 2**40", _dense_backward(k=BIG), f"in_features is {BIG}"),
    Case("maxplus_backward", "argmax int64", _dense_backward(arg_dtype=I64), "int32"),
    Case("maxplus_backward", "argmax of another shape", _dense_backward(arg_shape=(4, 2)), "differ"),
    Case("maxplus_backward", "0-d grad", lambda: (torch.randn(()), _full((), 0), 5, False, False),
         "output dim"),
    # sparse_maxplus: index in [0, x.size(dim))
    Case("sparse_maxplus", "valid", _sparse(index=5), None),
    Case("sparse_maxplus", "index = in_features", _sparse(index=6), "holds 6"),
    Case("sparse_maxplus", "index -1", _sparse(index=-1), "holds -1"),
    Case("sparse_maxplus", "index 10**12", _sparse(index=10**12), "holds 1000000000000"),
    Case("sparse_maxplus", "index -10**12", _sparse(index=-10**12), "holds -1000000000000"),
    Case("sparse_maxplus", "dim 2", _sparse(dim=2), "dim 2"),
    Case("sparse_maxplus", "dim -3", _sparse(dim=-3), "dim -3"),
    Case("sparse_maxplus", "index int32", _sparse(index_dtype=I32), "int64"),
    Case("sparse_maxplus", "value of another shape", _sparse(value_shape=(3, 3)), "same shape"),
    # sparse_maxplus_backward: argmax in [-1, k), index in [0, in_features)
    Case("sparse_maxplus_backward", "valid", _sparse_backward(argmax=1, index=5), None),
    Case("sparse_maxplus_backward", "argmax = k", _sparse_backward(argmax=2), "holds 2"),
    Case("sparse_maxplus_backward", "argmax 2**30", _sparse_backward(argmax=2**30), "holds 1073741824"),
    Case("sparse_maxplus_backward", "argmax -2", _sparse_backward(argmax=-2), "holds -2"),
    Case("sparse_maxplus_backward", "index 10**12", _sparse_backward(index=10**12),
         "holds 1000000000000"),
    Case("sparse_maxplus_backward", "index = in_features", _sparse_backward(index=6), "holds 6"),
    Case("sparse_maxplus_backward", "index -1", _sparse_backward(index=-1), "holds -1"),
    Case("sparse_maxplus_backward", "in_features below the index", _sparse_backward(index=5, n_in=3),
         "holds 5, outside [0, 3)"),
    Case("sparse_maxplus_backward", "in_features -1", _sparse_backward(n_in=-1), "in_features is -1"),
    Case("sparse_maxplus_backward", "in_features 2**40", _sparse_backward(n_in=BIG),
         f"in_features is {BIG}"),
    Case("sparse_maxplus_backward", "dim 5", _sparse_backward(dim=5), "dim 5"),
    Case("sparse_maxplus_backward", "index rows != outputs", _sparse_backward(out=2), "outputs along dim"),
    # dilation2d / erosion2d: windows that fit the int32 index math
    Case("dilation2d", "valid", _morph(), None),
    Case("dilation2d", "stride 0", _morph(stride=(0, 1)), "stride [0, 1]"),
    Case("dilation2d", "padding -1", _morph(padding=(-1, 0)), "padding [-1, 0]"),
    Case("dilation2d", "dilation 0", _morph(dilation=(1, 0)), "dilation [1, 0]"),
    Case("dilation2d", "padding 2**40", _morph(padding=(BIG, 0)), f"padding [{BIG}, 0]"),
    Case("dilation2d", "dilation 2**40", _morph(dilation=(BIG, 1)), f"dilation [{BIG}, 1]"),
    Case("dilation2d", "stride 2**40", _morph(stride=(1, BIG)), f"stride [1, {BIG}]"),
    Case("dilation2d", "weight of other channels", _morph(weight=(3, 3, 3)), "channels"),
    Case("dilation2d", "kernel past the input", _morph(weight=(2, 9, 9)), "larger"),
    Case("erosion2d", "valid", _morph(weight=(4, 2, 3, 3)), None),
    Case("erosion2d", "padding 2**40", _morph(padding=(0, BIG)), f"padding [0, {BIG}]"),
    Case("erosion2d", "dilation 2**40", _morph(dilation=(1, BIG)), f"dilation [1, {BIG}]"),
    Case("erosion2d", "stride -1", _morph(stride=(-1, 1)), "stride [-1, 1]"),
    # dilation2d_backward / erosion2d_backward: argmax in [0, kh * kw) or [0, C * kh * kw)
    Case("dilation2d_backward", "valid", _morph_backward(argmax=8), None),
    Case("dilation2d_backward", "argmax 2**30", _morph_backward(argmax=2**30), "holds 1073741824"),
    Case("dilation2d_backward", "argmax = kh * kw", _morph_backward(argmax=9), "holds 9"),
    Case("dilation2d_backward", "argmax -1", _morph_backward(argmax=-1), "holds -1"),
    Case("dilation2d_backward", "full SE, argmax = C * kh * kw",
         _morph_backward(argmax=18, weight_size=(4, 2, 3, 3), grad=(1, 4, 3, 3)), "holds 18"),
    Case("dilation2d_backward", "weight_size of other channels",
         _morph_backward(weight_size=(1, 3, 3)), "channels"),
    Case("dilation2d_backward", "full weight_size of other channels",
         _morph_backward(weight_size=(2, 3, 3, 3)), "channels"),
    Case("dilation2d_backward", "input_size -5", _morph_backward(input_size=(1, 2, -5, 5)),
         "input_size is -5"),
    Case("dilation2d_backward", "input_size 2**40", _morph_backward(input_size=(1, 2, BIG, 5)),
         f"input_size is {BIG}"),
    Case("dilation2d_backward", "weight_size -3", _morph_backward(weight_size=(2, -3, 3)),
         "weight_size is -3"),
    Case("dilation2d_backward", "input_size of 3 dims", _morph_backward(input_size=(1, 2, 5)),
         "input_size must be"),
    Case("dilation2d_backward", "grad not the output size", _morph_backward(grad=(1, 2, 4, 3)),
         "output size"),
    Case("dilation2d_backward", "padding 2**40", _morph_backward(padding=(BIG, 0)),
         f"padding [{BIG}, 0]"),
    Case("erosion2d_backward", "valid", _morph_backward(argmax=0), None),
    Case("erosion2d_backward", "argmax 2**30", _morph_backward(argmax=2**30), "holds 1073741824"),
    Case("erosion2d_backward", "argmax -2", _morph_backward(argmax=-2), "holds -2"),
    Case("erosion2d_backward", "dilation 2**40", _morph_backward(dilation=(BIG, 1)),
         f"dilation [{BIG}, 1]"),
    # pack_bits / unpack_bits: channels that fit the words
    Case("pack_bits", "valid", lambda: (torch.ones(1, 3, 2, 2),), None),
    Case("pack_bits", "3-d x", lambda: (torch.ones(3, 2, 2),), "(N, C, H, W)"),
    Case("pack_bits", "complex x", lambda: (torch.ones(1, 3, 2, 2, dtype=torch.complex64),),
         "unsupported dtype"),
    Case("unpack_bits", "valid", lambda: (_full((1, 2, 2, 1), 5, U64), 64, None), None),
    Case("unpack_bits", "channels -1", lambda: (_full((1, 2, 2, 1), 5, U64), -1, None), "-1 channels"),
    Case("unpack_bits", "channels 65", lambda: (_full((1, 2, 2, 1), 5, U64), 65, None), "65 channels"),
    Case("unpack_bits", "channels 2**62", lambda: (_full((1, 2, 2, 1), 5, U64), 2**62, None),
         f"{2**62} channels"),
    Case("unpack_bits", "int64 words", lambda: (_full((1, 2, 2, 1), 5, I64), 3, None), "uint64"),
    # bool_conv2d
    Case("bool_conv2d", "valid", _bool_conv(), None),
    Case("bool_conv2d", "stride 0", _bool_conv(stride=(0, 1)), "stride [0, 1]"),
    Case("bool_conv2d", "padding 2**40", _bool_conv(padding=(BIG, 0)), f"padding [{BIG}, 0]"),
    Case("bool_conv2d", "dilation 2**40", _bool_conv(dilation=(1, BIG)), f"dilation [1, {BIG}]"),
    Case("bool_conv2d", "threshold of 3 channels", _bool_conv(threshold=(3,)), "threshold must be"),
    Case("bool_conv2d", "float threshold", _bool_conv(threshold_dtype=torch.float32),
         "threshold must be"),
    Case("bool_conv2d", "weight words != x words", _bool_conv(pos=(2, 3, 3, 1, 2)), "weight planes"),
    Case("bool_conv2d", "63 planes", _bool_conv(pos=(2, 3, 3, 40, 1), neg=(2, 3, 3, 23, 1)),
         "too many weight planes"),
    Case("bool_conv2d", "kernel past the input", _bool_conv(pos=(2, 9, 9, 1, 1), neg=(2, 9, 9, 0, 1)),
         "larger"),
    # binary_dilation2d / binary_erosion2d
    Case("binary_dilation2d", "valid", _bit_morph(), None),
    Case("binary_dilation2d", "se of 65 channels", _bit_morph(se=(65, 3, 3)), "65 channels"),
    Case("binary_dilation2d", "padding 2**40", _bit_morph(padding=(BIG, 0)), f"padding [{BIG}, 0]"),
    Case("binary_dilation2d", "float se", _bit_morph(se_dtype=torch.float32), "bool"),
    Case("binary_erosion2d", "valid", _bit_morph(), None),
    Case("binary_erosion2d", "stride 0", _bit_morph(stride=(1, 0)), "stride [1, 0]"),
    Case("binary_erosion2d", "dilation 2**40", _bit_morph(dilation=(BIG, 1)), f"dilation [{BIG}, 1]"),
]


def namespace(backend: str):
    """Load the backend's library and return its operator namespace."""
    from tropfx.kernels import _build

    if not _build.load():
        raise SystemExit(f"the CPU kernels are not built: {_build.build_info()['error']}")
    if backend == "emulated":
        from tropfx.kernels.cuda_build import build_emulation

        build_emulation()
        return torch.ops.tropfx_emu
    if backend == "cuda":
        from tropfx.kernels.cuda_build import load_cuda

        if not load_cuda():
            raise SystemExit("the CUDA kernels did not load")
    return torch.ops.tropfx


def run(backend: str, first: int) -> None:
    ops = namespace(backend)
    device = "cuda" if backend == "cuda" else "cpu"
    for i in range(first, len(CASES)):
        case = CASES[i]
        print(json.dumps({"case": i, "event": "start"}), flush=True)
        args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in case.args()]
        try:
            getattr(ops, case.op)(*args)
            if device == "cuda":
                torch.cuda.synchronize()
            result = {"outcome": "returned"}
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:
            result = {"outcome": "raised", "type": type(exc).__name__, "message": str(exc)}
        print(json.dumps({"case": i, "event": "end", **result}), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)

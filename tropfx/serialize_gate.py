"""The gate of ``tropfx.load``: what a ``.tropfx`` file may contain, and the checks that refuse the rest.

A file is read in this order, and each step refuses with :class:`SerializationError` before the
next one runs (STYLE.md point 10, "readers are gates"):

1. :func:`check_archive`: the zip's directory, before ``torch.load`` reads a record: the records
   may expand to at most ``max_bytes`` (default :data:`BYTES_PER_FILE_BYTE` x the file's size), and
   the pickle record's CRC must match (a flipped bit in the recipe is refused, not decoded);
2. ``torch.load(weights_only=True)`` of plain data, then :func:`check_blob`: exactly the keys
   ``tropfx.save`` writes, and plain dense tensors;
3. :func:`parse_recipe`: JSON nested at most :data:`MAX_DEPTH` deep; :func:`check_tensors`: the
   tensors have the shapes and dtypes the recipe declares (format 2), none describing more
   elements than its record holds;
4. while building: every name resolved through the tables below (:func:`resolve_function`,
   :func:`check_method`, :func:`module_entry`) and every string that torch.fx pastes into the
   generated ``forward`` (node names, placeholder targets, attribute paths, method names, kwargs
   keys) checked as what it is (:func:`check_identifier`, :func:`check_segment`,
   :func:`check_kwargs`). ``tropfx.save`` runs the same checks on what it writes, so it never
   writes a file that ``load`` refuses.

The tables are explicit lists of names, never a whole module: pure tensor computations of
``torch``, ``torch.nn.functional``, ``operator``, ``math``, tropfx's layers and operators, a few
builtins and the private torch functions real models use (``torch._assert``, ``torch._C._nn.*``),
one by one. Nothing that does I/O, touches process-wide state, takes a callable or returns code is
listed (see docs/serialization.md for the threat model). :func:`tropfx.register_serializable`
extends them with one's own layers and functions.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import json
import keyword
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from tropfx.errors import TropfxError

FORMAT = "tropfx.module"
VERSION = 2  # 2: tensors declared in the recipe (shape, dtype); version 1 files still load
MAX_DEPTH = 200  # JSON nesting: a value tag {"$": ..., "v": [...]} is 2 levels, a child module 2
BYTES_PER_FILE_BYTE = 4  # default max_bytes: the records may expand to 4x the file (min. 1 MiB)
MIN_MAX_BYTES = 1 << 20

PathOrFile = str | os.PathLike | IO[bytes]


class SerializationError(TropfxError, ValueError):
    """A module cannot be saved without code, or a file is not a valid tropfx module file."""


# --------------------------------------------------------------------------------------------------
# Tables. Names are "module:attr"; a function is looked up in FUNCTIONS, never imported by name.

# torch.* functions that compute on tensors (math, reductions, shapes, indexing, creation of
# constants, the layers' functional forms). Not listed on purpose: I/O (load, save, from_file),
# process state (set_*, manual_seed, seed, use_deterministic_algorithms, compile), callables as
# arguments (cond, vmap, func), random draws (rand*, bernoulli, normal, multinomial).
_TORCH = """
    abs absolute acos acosh add addbmm addcdiv addcmul addmm addmv addr adaptive_avg_pool1d
    adaptive_max_pool1d alpha_dropout all allclose amax amin aminmax angle any arange arccos
    arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argsort argwhere as_strided
    as_tensor asin asinh atan atan2 atanh atleast_1d atleast_2d atleast_3d avg_pool1d baddbmm
    batch_norm bitwise_and bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift
    bitwise_xor block_diag bmm broadcast_shapes broadcast_tensors broadcast_to bucketize
    cartesian_prod cat cdist ceil celu channel_shuffle chunk clamp clamp_max clamp_min clip clone
    column_stack concat concatenate conv1d conv2d conv3d conv_tbc conv_transpose1d
    conv_transpose2d conv_transpose3d copysign cos cosh cosine_similarity count_nonzero cross
    cummax cummin cumprod cumsum cumulative_trapezoid deg2rad detach diag diag_embed diagflat
    diagonal diff dist div divide dot dropout dsplit dstack einsum embedding empty empty_like eq
    equal erf erfc erfinv exp exp2 expm1 eye feature_alpha_dropout feature_dropout fix flatten
    flip fliplr flipud float_power floor floor_divide fmax fmin fmod frac full full_like gather
    gcd ge greater greater_equal group_norm gt hardshrink heaviside hsplit hstack hypot
    index_add index_copy index_fill index_put index_reduce index_select inner instance_norm
    is_complex is_floating_point is_nonzero is_tensor isclose isfinite isin isinf isnan
    isneginf isposinf isreal kron kthvalue layer_norm lcm ldexp le lerp less less_equal lgamma
    linspace log log10 log1p log2 log_softmax logaddexp logaddexp2 logcumsumexp logical_and
    logical_not logical_or logical_xor logit logspace logsumexp lt masked_fill masked_scatter
    masked_select matmul max max_pool1d max_pool2d max_pool3d maximum mean median meshgrid min
    minimum mm mode moveaxis movedim msort mul multiply mv nan_to_num nanmean nanmedian
    nanquantile nansum narrow narrow_copy native_channel_shuffle ne neg negative nextafter norm
    not_equal numel ones ones_like outer pairwise_distance permute pixel_shuffle pixel_unshuffle
    polar pow prelu prod promote_types quantile rad2deg ravel real reciprocal relu remainder
    repeat_interleave reshape result_type roll rot90 round rsqrt scalar_tensor scatter
    scatter_add scatter_reduce searchsorted select select_scatter selu sgn sigmoid sign signbit
    sin sinc sinh slice_scatter softmax sort split sqrt square squeeze stack std std_mean sub
    subtract sum swapaxes swapdims t take take_along_dim tan tanh tensor tensor_split tensordot
    threshold tile topk trace transpose trapezoid tril tril_indices triu triu_indices true_divide
    trunc unbind unflatten unique unique_consecutive unsqueeze vander var var_mean vdot view_as_complex
    view_as_real vsplit vstack where xlogy zeros zeros_like
    alpha_dropout_ celu_ dropout_ feature_alpha_dropout_ feature_dropout_ relu_ rrelu_ selu_
    threshold_
"""
# torch.nn.functional: the functional layers (pure; dropout draws from torch's generator in
# training mode, as the module does).
_FUNCTIONAL = """
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d affine_grid alpha_dropout avg_pool1d avg_pool2d
    avg_pool3d batch_norm bilinear celu channel_shuffle conv1d conv2d conv3d conv_transpose1d
    conv_transpose2d conv_transpose3d cosine_similarity dropout dropout1d dropout2d dropout3d elu
    embedding feature_alpha_dropout fold gelu glu grid_sample group_norm gumbel_softmax hardshrink
    hardsigmoid hardswish hardtanh instance_norm interpolate layer_norm leaky_relu linear
    local_response_norm log_softmax logsigmoid lp_pool1d lp_pool2d lp_pool3d max_pool1d
    max_pool2d max_pool3d mish normalize one_hot pad pairwise_distance pdist pixel_shuffle
    pixel_unshuffle prelu relu relu6 rms_norm rrelu scaled_dot_product_attention selu sigmoid
    silu softmax softmin softplus softshrink softsign tanh tanhshrink threshold unfold upsample
    upsample_bilinear upsample_nearest
"""
# torch._C._nn: where torch.nn.functional's C functions live (F.linear is torch._C._nn.linear).
_C_NN = """
    adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d avg_pool2d
    avg_pool3d elu gelu glu hardsigmoid hardswish hardtanh leaky_relu linear log_sigmoid mish
    one_hot pad reflection_pad1d reflection_pad2d reflection_pad3d relu6 replication_pad1d
    replication_pad2d replication_pad3d scaled_dot_product_attention silu softplus softshrink
    upsample_bilinear2d upsample_bicubic2d upsample_linear1d upsample_nearest1d
    upsample_nearest2d upsample_nearest3d upsample_trilinear3d
    elu_ hardsigmoid_ hardswish_ hardtanh_ leaky_relu_ mish_ silu_
"""
_LINALG = "matrix_norm norm vector_norm vecdot"
_OPERATOR = """
    abs add and_ eq floordiv ge getitem gt iadd iand ifloordiv ilshift imatmul imod imul invert
    ior ipow irshift isub itruediv ixor le lshift lt matmul mod mul ne neg not_ or_ pos pow
    rshift sub truediv truth xor
"""
_MATH = "ceil floor sqrt exp log log2 log10 pow trunc isfinite isinf isnan prod fabs"
# Private torch functions real models call, one by one (torchvision ViT, timm's BatchNormAct2d).
_PRIVATE = {"torch": "_assert"}
# tropfx's functions that graphs hold (fx.wrap'ed layers and checks); the kernel wrappers of
# tropfx.kernels register themselves where they are defined.
_TROPFX = {
    "tropfx.nn.functional": "maxplus minplus sparse_maxplus sparse_minplus diagonal_maxplus "
                            "diagonal_minplus maxout check_tropical",
    "tropfx.nn.morphology": "dilation1d dilation2d erosion1d erosion2d",
    "tropfx.nn.bise": "check_bise_input check_bise_parameters check_level_input smooth_threshold",
}
# Builtins (fx records x.shape as getattr(x, "shape")), and the attributes getattr may read.
_BUILTINS = "abs bool float getattr int len max min round slice tuple"
GETATTR_NAMES = frozenset("""
    shape dtype device ndim T mT H mH is_cuda is_floating_point layout real imag requires_grad
""".split())
# torch.ops namespaces: the tropfx kernels (forward operators only: nothing in a graph calls a
# backward, and _output_cache changes process state) and aten operators named like a function or
# method above.
TROPFX_OPS = frozenset("""
    maxplus sparse_maxplus dilation2d erosion2d pack_bits unpack_bits bool_conv2d
    binary_dilation2d binary_erosion2d
""".split())

# Tensor methods: pure computations. Not listed on purpose: numpy, tolist, tofile, storage,
# untyped_storage, share_memory_, set_, resize_, data_ptr, apply_, map_, register_hook, backward,
# pin_memory, record_stream, cuda / cpu (use .to), and other in-place writes.
METHODS = frozenset("""
    abs acos add addcdiv addcmul addmm all amax amin any argmax argmin argsort asin atan atan2
    baddbmm bfloat16 bitwise_and bitwise_not bitwise_or bitwise_xor bmm bool byte ceil char chunk
    clamp clamp_max clamp_min clip clone contiguous cos cosh count_nonzero cumprod cumsum
    detach diag diagonal diff dim div divide dot double element_size eq erf exp expand expand_as
    expm1 flatten flip float floor floor_divide fmod frac gather ge gelu gt half index_add
    index_copy index_fill index_select int is_complex is_contiguous is_floating_point isfinite
    isinf isnan le lerp log log10 log1p log2 log_softmax logical_and logical_not logical_or
    logical_xor logsumexp long lt masked_fill masked_scatter masked_select matmul max maximum
    mean median min minimum mm movedim mul multiply mv nan_to_num nanmean nansum narrow ndimension
    ne neg negative nelement new_empty new_full new_ones new_tensor new_zeros norm numel outer
    permute pow prod reciprocal relu remainder repeat repeat_interleave reshape reshape_as roll
    round rsqrt scatter scatter_add select short sigmoid sign silu sin sinh size softmax sort
    split sqrt square squeeze std sub sum swapaxes swapdims t take tan tanh tensor_split tile to
    topk transpose tril triu true_divide trunc type_as unbind unflatten unfold unsqueeze var view
    view_as where
    add_ clamp_ clamp_min_ div_ masked_fill_ mul_ relu_ sigmoid_ sub_ tanh_
""".split())

# torch.nn layers, looked up by class name in torch.nn. Not listed: losses, DataParallel,
# SyncBatchNorm (process groups), lazy layers (no shapes), Container.
_NN = """
    AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d
    AdaptiveMaxPool3d AlphaDropout AvgPool1d AvgPool2d AvgPool3d BatchNorm1d BatchNorm2d
    BatchNorm3d Bilinear CELU ChannelShuffle CircularPad1d CircularPad2d CircularPad3d
    ConstantPad1d ConstantPad2d ConstantPad3d Conv1d Conv2d Conv3d ConvTranspose1d
    ConvTranspose2d ConvTranspose3d CosineSimilarity Dropout Dropout1d Dropout2d Dropout3d ELU
    Embedding EmbeddingBag FeatureAlphaDropout Flatten Fold GELU GLU GRU GRUCell GroupNorm
    Hardshrink Hardsigmoid Hardswish Hardtanh Identity InstanceNorm1d InstanceNorm2d
    InstanceNorm3d LPPool1d LPPool2d LPPool3d LSTM LSTMCell LayerNorm LeakyReLU Linear
    LocalResponseNorm LogSigmoid LogSoftmax MaxPool1d MaxPool2d MaxPool3d Mish Module ModuleDict
    ModuleList MultiheadAttention PReLU PairwiseDistance ParameterDict ParameterList PixelShuffle
    PixelUnshuffle RMSNorm RNN RNNCell RReLU ReLU ReLU6 ReflectionPad1d ReflectionPad2d
    ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d SELU Sequential SiLU
    Sigmoid Softmax Softmax2d Softmin Softplus Softshrink Softsign Tanh Tanhshrink Threshold
    Transformer TransformerDecoder TransformerDecoderLayer TransformerEncoder
    TransformerEncoderLayer Unflatten Unfold Upsample UpsamplingBilinear2d UpsamplingNearest2d
    ZeroPad1d ZeroPad2d ZeroPad3d
"""
_NN_EXTRA = {"torch.nn.modules.linear": "NonDynamicallyQuantizableLinear"}  # MultiheadAttention's
_TROPFX_LAYERS = {
    "tropfx.nn.maxplus": "MaxPlus MinPlus SparseMaxPlus SparseMinPlus Maxout",
    "tropfx.nn.morphology": "Dilation1d Dilation2d Erosion1d Erosion2d",
    "tropfx.nn.bise": "BiSE LUI DenseLUI BiSEL LevelSetEncoder",
}

# Functions never admitted, not even by register_serializable (a safety net for typos).
_NEVER = {
    "torch": "load save from_file set_default_dtype set_default_device set_default_tensor_type "
             "set_num_threads set_num_interop_threads set_flush_denormal set_printoptions "
             "set_rng_state manual_seed seed initial_seed compile cond vmap "
             "use_deterministic_algorithms set_grad_enabled set_anomaly_enabled",
    "operator": "call setitem delitem attrgetter methodcaller itemgetter",
    "builtins": "eval exec compile open __import__ getattr setattr delattr input print",
}

ConfigFn = Callable[[nn.Module], dict[str, Any]]
BuildFn = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModuleEntry:
    cls: type[nn.Module]
    name: str
    config: ConfigFn | None  # None: the default, constructor_config
    build: BuildFn


@dataclass
class _Tables:
    functions: dict[str, Callable]  # "module:attr" -> function
    function_names: dict[Any, str]  # function -> the name it is saved under
    modules: dict[str, ModuleEntry]  # qualified class name -> entry
    module_names: dict[type, ModuleEntry]


def home(fn: Any) -> str:
    """The module a function is defined in (``operator`` for ``_operator``)."""
    module = getattr(fn, "__module__", None) or ""
    return "operator" if module == "_operator" else module


def qualified(obj: Any) -> str:
    return f"{home(obj)}.{obj.__qualname__}"


def _names(spec: str) -> list[str]:
    return spec.split()


_BUILT: list[_Tables] = []
_PENDING: list[tuple] = []  # registrations made before the tables were built


def tables() -> _Tables:
    """The tables, built on first use: tropfx.nn registers its layers while it is being imported,
    so building them then would import tropfx.nn half-way."""
    if not _BUILT:
        _BUILT.append(_build_tables())
        for args in _PENDING:
            _apply(_BUILT[0], *args)
        _PENDING.clear()
    return _BUILT[0]


def _build_tables() -> _Tables:
    t = _Tables({}, {}, {}, {})
    spaces = [("torch", _TORCH), ("torch.nn.functional", _FUNCTIONAL), ("torch._C._nn", _C_NN),
              ("torch.linalg", _LINALG), ("operator", _OPERATOR), ("math", _MATH),
              ("builtins", _BUILTINS), *_PRIVATE.items(), *_TROPFX.items()]
    for space, spec in spaces:
        module = importlib.import_module(space)
        for attr in _names(spec):
            fn = getattr(module, attr, None)
            if fn is None:  # not in this torch version
                continue
            _add_function(t, f"{space}:{attr}", fn)
            # Also the spelling older files used: the module the function is defined in.
            own = f"{home(fn)}:{getattr(fn, '__name__', attr)}"
            if own != f"{space}:{attr}" and _defined_as(own, fn):
                _add_function(t, own, fn, prefer=True)
    for cls_name in _names(_NN):
        _add_module(t, ModuleEntry(getattr(nn, cls_name), "", None, getattr(nn, cls_name)))
    for space, spec in [*_NN_EXTRA.items(), *_TROPFX_LAYERS.items()]:
        module = importlib.import_module(space)
        for cls_name in _names(spec):
            cls = getattr(module, cls_name)
            _add_module(t, ModuleEntry(cls, "", None, cls))
    return t


@functools.cache
def _never() -> tuple[frozenset, frozenset]:
    """Ids and names of the functions register_serializable refuses."""
    ids = frozenset(id(getattr(importlib.import_module(space), a)) for space, spec in
                    _NEVER.items() for a in _names(spec)
                    if hasattr(importlib.import_module(space), a))
    return ids, frozenset(a for spec in _NEVER.values() for a in _names(spec))


def _defined_as(name: str, fn: Any) -> bool:
    space, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(space), attr, None) is fn
    except ImportError:
        return False


def _add_function(t: _Tables, name: str, fn: Callable, prefer: bool = False) -> None:
    t.functions[name] = fn
    if prefer or fn not in t.function_names:
        t.function_names[fn] = name


def _add_module(t: _Tables, entry: ModuleEntry) -> None:
    name = entry.name or qualified(entry.cls)
    entry = ModuleEntry(entry.cls, name, entry.config, entry.build)
    t.modules[name] = entry
    t.module_names[entry.cls] = entry


def register(obj: Any, name: str | None, config: ConfigFn | None, build: BuildFn | None) -> None:
    """The table side of :func:`tropfx.register_serializable`: checked now, applied when the
    tables exist."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        key = name or f"{home(obj)}:{getattr(obj, '__qualname__', '?')}"
        if not callable(obj):
            raise SerializationError(f"register_serializable expects an nn.Module class or a "
                                     f"function, got {type(obj).__name__}")
        if config is not None or build is not None:
            raise SerializationError(f"register_serializable({key}): config= and build= are for "
                                     "nn.Module classes; a function needs neither")
        ids, names = _never()
        denied = id(obj) in ids or (  # by name too: tools (Hypothesis) wrap torch.manual_seed
            getattr(obj, "__name__", None) in names
            and home(obj).partition(".")[0] in ("torch", "operator", "builtins"))
        if denied or isinstance(obj, type):
            raise SerializationError(f"register_serializable({key}): {key} does I/O, changes "
                                     "process state or builds objects; a saved graph may never "
                                     "call it")
    if _BUILT:
        _apply(_BUILT[0], obj, name, config, build)
    else:
        _PENDING.append((obj, name, config, build))


def _apply(t: _Tables, obj: Any, name: str | None, config: ConfigFn | None,
           build: BuildFn | None) -> None:
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        _add_module(t, ModuleEntry(obj, name or "", config, build or obj))
    else:
        _add_function(t, name or f"{home(obj)}:{getattr(obj, '__qualname__', '?')}", obj,
                      prefer=True)


def function_name(fn: Any) -> str | None:
    """The name ``fn`` is saved under, or None if no table holds it."""
    if isinstance(fn, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        name = f"torch.ops:{fn}"
        try:
            return name if resolve_function(name, "") is fn else None
        except SerializationError:
            return None
    try:
        return tables().function_names.get(fn)
    except TypeError:  # unhashable
        return None


def resolve_function(name: Any, where: str) -> Callable:
    """The function a ``call_function`` node names: from the tables, never imported by name."""
    if not isinstance(name, str):
        raise SerializationError(f"{where}: function {name!r:.80} is not a name")
    fn = tables().functions.get(name)
    if fn is not None:
        return fn
    if name.startswith("torch.ops:"):
        return _resolve_op(name.removeprefix("torch.ops:"), where)
    raise SerializationError(
        f"{where}: function {name!r:.120} is not in tropfx's tables (pure tensor functions of "
        "torch, torch.nn.functional, operator, math and tropfx); if you trust it, call "
        "tropfx.register_serializable(fn, name=...) before tropfx.load")


def _resolve_op(name: str, where: str) -> Callable:
    parts = name.split(".")
    if not (2 <= len(parts) <= 3 and all(p.isidentifier() for p in parts)):
        raise SerializationError(f"{where}: operator torch.ops.{name:.120} is not a valid name")
    space, op = parts[0], parts[1]
    allowed = (space == "tropfx" and op in TROPFX_OPS) or (
        space == "aten" and (op in METHODS or f"torch:{op}" in tables().functions))
    if not allowed:
        raise SerializationError(f"{where}: operator torch.ops.{name} is not allowed (tropfx's "
                                 "forward kernels and aten operators of the allowed functions)")
    try:
        obj: Any = getattr(getattr(torch.ops, space), op)
        if len(parts) == 3:
            obj = getattr(obj, parts[2])
    except (AttributeError, RuntimeError) as exc:
        raise SerializationError(f"{where}: operator torch.ops.{name} does not exist (is the "
                                 "extension that defines it loaded?)") from exc
    return obj


def check_method(name: Any, where: str) -> str:
    if not (isinstance(name, str) and name in METHODS):
        raise SerializationError(
            f"{where}: tensor method {name!r:.120} is not allowed (only pure tensor methods: "
            "reshape, view, add, mean, ...; no numpy / tofile / storage / set_ ...)")
    return name


def check_getattr(args: tuple, where: str) -> None:
    if not (len(args) == 2 and isinstance(args[1], str) and args[1] in GETATTR_NAMES):
        shown = args[1] if len(args) == 2 else args
        raise SerializationError(f"{where}: getattr of {shown!r:.80} is not allowed (only "
                                 f"{', '.join(sorted(GETATTR_NAMES))})")


def module_entry(cls: type) -> ModuleEntry | None:
    return tables().module_names.get(cls)


def module_class(name: Any, where: str) -> ModuleEntry:
    """The layer class a file names, from the tables; never imported by name."""
    entry = tables().modules.get(name) if isinstance(name, str) else None
    if entry is None:
        attr = str(name).rpartition(".")[2]
        shown = name if isinstance(name, str) and name.isprintable() else repr(name)
        raise SerializationError(
            f"cannot load {where}: its class {shown:.120} is not allowed (tropfx.load builds "
            "the torch.nn and tropfx.nn layers in its tables only); if you trust it, import it "
            f"and call tropfx.register_serializable({attr:.60}) before tropfx.load")
    return entry


# --------------------------------------------------------------------------------------------------
# Names: each checked as what it is before torch.fx pastes it into generated code.

_TYPE_PATTERN = re.compile(r"[A-Za-z_][\w.]*(\[[\w., \[\]|]*\])?")
_PLACEHOLDER_PATTERN = re.compile(r"\*{0,2}[A-Za-z_]\w*")


def check_identifier(name: Any, what: str, where: str) -> str:
    """A Python identifier, not a keyword and not ``self`` (node names, kwargs keys)."""
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)
            and name != "self"):
        raise SerializationError(f"{where}: {what} {name!r:.120} is not a Python identifier")
    return name


def check_placeholder(target: Any, where: str) -> str:
    if not (isinstance(target, str) and _PLACEHOLDER_PATTERN.fullmatch(target)
            and not keyword.iskeyword(target.lstrip("*")) and target.lstrip("*") != "self"):
        raise SerializationError(f"{where}: input name {target!r:.120} is not an identifier")
    return target


def check_segment(name: Any, what: str, where: str) -> str:
    """A name ``nn.Module.add_module`` accepts (``block1-0`` included) that torch.fx can write:
    it quotes a segment that is not an identifier as ``getattr(self, "block1-0")`` without
    escaping, so quotes, backslashes and unprintable characters are refused; so are dunders and
    keywords (``self.class`` is a syntax error)."""
    if not (isinstance(name, str) and _segment_ok(name)):
        raise SerializationError(f"{where}: {what} {name!r:.120} is not a valid module or "
                                 "attribute name (no dots, quotes, backslashes, dunders, keywords)")
    return name


@functools.lru_cache(maxsize=8192)
def _segment_ok(name: str) -> bool:
    return (bool(name) and "." not in name and name.isprintable()
            and not any(c in name for c in "\"'\\") and not name.startswith("__")
            and not keyword.iskeyword(name))


def check_path(path: Any, what: str, where: str) -> str:
    if not isinstance(path, str):
        raise SerializationError(f"{where}: {what} {path!r:.120} is not a string")
    for part in path.split("."):
        check_segment(part, what, where)
    return path


def check_type_name(name: Any) -> bool:
    """A type annotation kept as a string: dotted names and brackets only (torch.fx binds it to a
    sanitized global name; it is never evaluated)."""
    return isinstance(name, str) and len(name) <= 200 and bool(_TYPE_PATTERN.fullmatch(name))


def check_kwargs(target: Any, kind: str, keys: list, where: str) -> None:
    """kwargs keys: identifiers that the target's signature accepts (``out=`` never: a graph does
    not write into tensors it was given)."""
    accepted = _accepted_kwargs(target, kind)
    for key in keys:
        check_identifier(key, "keyword argument", where)
        if key == "out" or (accepted is not None and key not in accepted):
            shown = getattr(target, "__name__", target)
            raise SerializationError(f"{where}: {shown} takes no keyword argument {key!r}")


@functools.cache
def _accepted_kwargs(target: Any, kind: str) -> frozenset | None:
    """Keyword names the target accepts; None when any identifier may be (``**kwargs``, or no
    signature known)."""
    if kind not in ("call_function", "call_method"):
        return None  # a module's forward checks its own at call time
    if kind == "call_method":
        schemas = torch._C._jit_get_schemas_for_operator(f"aten::{target}")
        names = {a.name for s in schemas for a in s.arguments} - {"self"}
        py = getattr(torch.Tensor, target, None)
        sig = _signature(py) if inspect.isfunction(py) else None
        if sig is not None:
            if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                return None
            names |= set(sig.parameters) - {"self"}
        return frozenset(names) if names else None
    dispatched = torch._jit_internal.boolean_dispatched.get(target)
    fns = [dispatched["if_true"], dispatched["if_false"]] if dispatched else [target]
    names: set[str] = set()
    for fn in fns:
        sig = _signature(fn)
        sigs = [sig] if sig is not None else (
            torch.fx.operator_schemas.get_signature_for_torch_op(fn) or [])
        if not sigs:
            return None
        for s in sigs:
            if any(p.kind == p.VAR_KEYWORD for p in s.parameters.values()):
                return None
            names |= {k for k, p in s.parameters.items()
                      if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return frozenset(names)


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Files: the zip's records before torch.load, the unpickled blob after, the recipe's JSON.


def default_max_bytes(size: int) -> int:
    return max(BYTES_PER_FILE_BYTE * size, MIN_MAX_BYTES)


def open_file(f: PathOrFile) -> tuple[Any, str, int]:
    """A seekable binary file, how to name it, and its size."""
    if isinstance(f, str | os.PathLike):
        name = os.fspath(f)
        try:
            return open(name, "rb"), name, os.path.getsize(name)  # noqa: SIM115 - closed by load
        except FileNotFoundError as exc:
            raise SerializationError(f"no such file: {name}") from exc
        except OSError as exc:
            raise SerializationError(f"cannot read {name}: {exc}") from exc
    if not (hasattr(f, "seek") and hasattr(f, "read")):
        raise SerializationError(f"tropfx.load expects a path or a binary file, got "
                                 f"{type(f).__name__}")
    if not f.seekable():
        f = io.BytesIO(f.read())
    start = f.tell()
    size = f.seek(0, io.SEEK_END) - start
    f.seek(start)
    return f, getattr(f, "name", "the file"), size


def check_archive(f: IO[bytes], name: str, max_bytes: int) -> None:
    """Refuse a file whose zip records would expand past ``max_bytes``, or whose pickle record is
    damaged, before ``torch.load`` reads any record."""
    start = f.tell()
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            total = sum(i.file_size for i in infos)
            if total > max_bytes:
                raise SerializationError(
                    f"{name}: its records expand to {total:,} bytes, more than max_bytes="
                    f"{max_bytes:,} (by default {BYTES_PER_FILE_BYTE}x the file's size); if you "
                    "trust it, raise max_bytes")
            pickles = [i for i in infos if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise SerializationError(f"{name} is not a tropfx module file (no single "
                                         "data.pkl record)")
            z.read(pickles[0])  # checks the CRC: a damaged recipe is refused, not decoded
    except SerializationError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, zlib.error, RuntimeError) as exc:
        raise SerializationError(f"{name} is not a tropfx module file (a damaged or truncated "
                                 f"zip archive: {exc})") from exc
    finally:
        f.seek(start)


_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
    torch.complex128, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    torch.uint16, torch.uint32, torch.uint64)}


def tensor_spec(t: torch.Tensor) -> dict[str, Any]:
    """What the recipe declares about a tensor record."""
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def check_blob(blob: Any, name: str) -> None:
    """The unpickled file: exactly what tropfx.save writes."""
    if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
        raise SerializationError(f"{name} is not a tropfx module file (saved by tropfx.save); a "
                                 "state_dict loads with model.load_state_dict(torch.load(...))")
    version = blob.get("version")
    if type(version) is not int or version > VERSION or version < 1:
        raise SerializationError(f"{name} has format version {version!r:.40}; this tropfx reads "
                                 f"1 to {VERSION}: upgrade tropfx")
    if set(blob) != {"format", "version", "recipe", "tensors"}:
        raise SerializationError(f"{name} is corrupt: it holds the entries {sorted(map(str, blob))}")
    if not isinstance(blob["recipe"], str):
        raise SerializationError(f"{name} is corrupt: its recipe is not a string")
    tensors = blob["tensors"]
    if not isinstance(tensors, dict):
        raise SerializationError(f"{name} is corrupt: its tensors are not a dict")
    for key, t in tensors.items():
        if not (isinstance(key, str) and type(t) is torch.Tensor and t.layout == torch.strided
                and t.dtype in _DTYPES.values() and not t.is_quantized):
            raise SerializationError(f"{name}: record {key!r:.80} is not a plain dense tensor "
                                     f"({type(t).__name__})")


def check_tensors(tensors: dict[str, torch.Tensor], declared: Any, name: str) -> None:
    """Each tensor as the recipe declares it (format 2), and no tensor describing more elements
    than its record holds (a stride-0 view of a small record is a huge tensor to compute on)."""
    if declared is not None:
        if not isinstance(declared, dict) or set(declared) != set(tensors):
            raise SerializationError(f"{name}: the recipe declares other tensors than the file "
                                     "holds")
        for key, spec in declared.items():
            t = tensors[key]
            ok = isinstance(spec, dict) and spec.get("shape") == list(t.shape) and \
                _DTYPES.get(spec.get("dtype")) == t.dtype
            if not ok:
                raise SerializationError(
                    f"{name}: record {key!r} holds a {str(t.dtype).removeprefix('torch.')} "
                    f"tensor of shape {list(t.shape)}, but the recipe declares {spec!r:.120}")
    for key, t in tensors.items():
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise SerializationError(f"{name}: record {key!r} describes {t.numel():,} elements "
                                     "with fewer bytes stored (an expanded view)")


def expanded(t: torch.Tensor) -> bool:
    """Whether ``t`` describes more elements than its storage holds (saved as a copy)."""
    return t.numel() * t.element_size() > t.untyped_storage().nbytes()


_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')


def check_depth(text: str, name: str) -> None:
    """JSON nested at most MAX_DEPTH deep, counted on the text before parsing (no RecursionError):
    escaped backslashes and quotes go first, then only brackets and quotes are kept, and the
    brackets outside strings (an even number of quotes before them) are summed up."""
    data = text.encode("utf-8", "replace").replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(data.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    outside = np.cumsum(codes == ord('"'), dtype=np.int64) % 2 == 0
    step = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int64) - \
        ((codes == ord("]")) | (codes == ord("}")))
    depth = int(np.cumsum(step * outside).max(initial=0))
    if depth > MAX_DEPTH:
        raise SerializationError(f"{name}: its recipe is nested {depth} deep, more than "
                                 f"{MAX_DEPTH}")


def parse_recipe(text: str, name: str) -> dict[str, Any]:
    check_depth(text, name)
    try:
        recipe = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"{name} is corrupt: its recipe is not valid JSON ({exc})") from exc
    if not (isinstance(recipe, dict) and isinstance(recipe.get("root"), dict)):
        raise SerializationError(f"{name} is corrupt: its recipe has no root module")
    return recipe



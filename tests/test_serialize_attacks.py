"""Attacks on tropfx.load, one class per test: each edits a legit file the way an attacker would and
checks that the file is refused with SerializationError and that nothing happened (no file created,
no process-wide setting changed), whether the file is loaded or `tropfx summary FILE` reads it."""

import gc
import io
import json
import random
import zipfile

import pytest
import torch
from torch import nn

import tropfx
from tropfx.cli import main as cli_main
from tropfx.serialize import SerializationError


class Victim(nn.Module):
    """One node of each kind: call_module, get_attr, call_function with a kwarg, call_method."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(3, 3))
        self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x):
        y = torch.add(self.lin(x), self.scale, alpha=2)
        return y.sum(dim=1)


@pytest.fixture(scope="module")
def legit():
    torch.manual_seed(0)
    cm = tropfx.compile(Victim(), [], example_inputs=(torch.randn(2, 3),))
    buf = io.BytesIO()
    tropfx.save(cm, buf)
    return buf.getvalue()


def blob_of(data):
    return torch.load(io.BytesIO(data), weights_only=True)


def write(blob):
    out = io.BytesIO()
    torch.save(blob, out)
    return out.getvalue()


def tampered(data, edit):
    """``data`` with its recipe edited by ``edit(recipe)`` (a JSON object), re-saved."""
    blob = blob_of(data)
    recipe = json.loads(blob["recipe"])
    edit(recipe)
    blob["recipe"] = json.dumps(recipe)
    return write(blob)


def node(recipe, op):
    return next(n for n in recipe["root"]["nodes"] if n["op"] == op)


class Witness:
    """What an attack would change: a file it would create, and process-wide settings."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "pwned"
        self.before = self.state()

    @staticmethod
    def state():
        return (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
                torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state().sum(),
                gc.isenabled())  # load pauses the garbage collector: it must restore it

    def code(self):
        """Python that creates the witness file."""
        return f"__import__('pathlib').Path({str(self.path)!r}).touch()"

    def assert_untouched(self):
        assert not self.path.exists(), "the attack wrote a file"
        assert self.state() == self.before, "the attack changed process-wide state"


def assert_refused(data, witness, match, tmp_path):
    """Refused by tropfx.load and by `tropfx summary FILE`; nothing happened either way."""
    with pytest.raises(SerializationError, match=match):
        tropfx.load(io.BytesIO(data))
    path = tmp_path / "attack.tropfx"
    path.write_bytes(data)
    assert cli_main(["summary", str(path), "--example-shape", "2,3"]) == 1
    witness.assert_untouched()


# --- code injection through the strings torch.fx writes into generated code ----------------

def test_kwargs_key_injection_is_refused(legit, tmp_path):
    w = Witness(tmp_path)
    keys = [f"**({{}} if {w.code()} else {{}}), alpha", "alpha=1, **{}", "alpha )#", "lambda",
            "out", "bogus", "", "alpha\n"]
    for key in keys:
        def edit(recipe, key=key):
            node(recipe, "call_function")["kwargs"] = {"$": "dict", "v": [[key, 2]]}
        assert_refused(tampered(legit, edit), w, "keyword argument|no keyword argument", tmp_path)
    # A key that is not a string at all.
    data = tampered(legit, lambda r: node(r, "call_method").update(
        kwargs={"$": "dict", "v": [[1, 2]]}))
    assert_refused(data, w, "keyword argument", tmp_path)


@pytest.mark.parametrize("name", ["x; import os", "self", "print", "if", "a b", "1x", "", None,
                                  "lin_0"])
def test_node_name_injection_is_refused(legit, tmp_path, name):
    w = Witness(tmp_path)
    injected = name if name != "x; import os" else f"x = 0; {w.code()}; y"

    def edit(recipe):
        node(recipe, "call_method")["name"] = injected

    assert_refused(tampered(legit, edit), w, "node name|torch.fx names it", tmp_path)


def test_target_injection_is_refused(legit, tmp_path):
    w = Witness(tmp_path)
    code = w.code()
    edits = {
        "placeholder default": ("placeholder", f"x, y={code}"),
        "placeholder": ("placeholder", f"x):\n    {code}\ndef f(x"),
        "get_attr quote": ("get_attr", f'scale"); {code}; ("'),
        "get_attr dunder": ("get_attr", "scale.__class__"),
        "get_attr dots": ("get_attr", "lin..0"),
        "get_attr module": ("get_attr", "lin"),
        "call_module quote": ("call_module", f'lin.0"), {code}, getattr(self, "lin'),
        "call_module keyword": ("call_module", "lin.class"),
        "call_module parameter": ("call_module", "scale"),
        "call_module missing": ("call_module", "lin.7"),
        "call_method code": ("call_method", f"sum(); {code}; x.sum"),
        "output": ("output", f"output; {code}"),
    }
    for what, (op, target) in edits.items():
        def edit(recipe, op=op, target=target):
            node(recipe, op)["target"] = target
        assert_refused(tampered(legit, edit), w, ".", tmp_path), what


def test_type_annotation_injection_is_refused(legit, tmp_path):
    w = Witness(tmp_path)
    for op in ("placeholder", "call_function", "output"):
        data = tampered(legit, lambda r, op=op: node(r, op).update(type=f"int = 0\n    {w.code()}"))
        assert_refused(data, w, "type annotation", tmp_path)


# --- targets that would do I/O or change process state --------------------------------------

@pytest.mark.parametrize("method", ["numpy", "tofile", "storage", "untyped_storage",
                                    "share_memory_", "set_", "data_ptr", "tolist", "register_hook",
                                    "apply_", "map_", "resize_", "__setitem__", "__reduce_ex__",
                                    "cuda", "pin_memory", "backward", "sum "])
def test_io_and_mutating_methods_are_refused(legit, tmp_path, method):
    w = Witness(tmp_path)

    def edit(recipe):  # buffer.<method>(path): e.g. numpy().tofile(path) writes attacker bytes
        n = node(recipe, "call_method")
        n.update(target=method, args={"$": "tuple", "v": [{"$": "node", "v": "scale"},
                                                          str(w.path)]},
                 kwargs={"$": "dict", "v": []})

    assert_refused(tampered(legit, edit), w, "tensor method .* is not allowed", tmp_path)


@pytest.mark.parametrize("target", [
    "torch:set_num_threads", "torch:set_default_dtype", "torch:set_flush_denormal",
    "torch:manual_seed", "torch:from_file", "torch:compile", "torch:load", "torch:save",
    "torch:use_deterministic_algorithms", "torch:set_grad_enabled", "torch:cond",
    "operator:call", "operator:setitem", "operator:attrgetter", "builtins:exec", "builtins:eval",
    "builtins:open", "builtins:setattr", "builtins:__import__", "os:system", "torch.ops:aten.set_",
    "torch.ops:tropfx._output_cache", "torch.ops:tropfx.maxplus_backward",
    "torch.ops:aten.from_file", "torch.nn.functional:torch", "torch:_C._set_num_threads",
    "torch.functional:set_num_threads", "torch: set_num_threads", "torch.backends.cudnn:enabled",
    "tropfx.kernels.ops.output_cache", "torch:_assert.__globals__", "math:__loader__",
])
def test_global_state_and_io_functions_are_refused(legit, tmp_path, target):
    w = Witness(tmp_path)

    def edit(recipe):  # e.g. torch.set_num_threads(1), torch.from_file(path, True, 10)
        n = node(recipe, "call_function")
        n.update(target=target, args={"$": "tuple", "v": [1]}, kwargs={"$": "dict", "v": []})

    assert_refused(tampered(legit, edit), w, "not in tropfx's tables|is not allowed", tmp_path)


def test_getattr_of_anything_but_tensor_facts_is_refused(tmp_path):
    class Shape(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)

    buf = io.BytesIO()
    tropfx.save(tropfx.compile(Shape(), []), buf)
    w = Witness(tmp_path)
    for attr in ("numpy", "__class__", "tofile", "_version", "data_ptr"):
        def edit(recipe, attr=attr):
            n = next(n for n in recipe["root"]["nodes"] if n["target"] == "builtins:getattr")
            n["args"]["v"][1] = attr
        assert_refused(tampered(buf.getvalue(), edit), w, "getattr of", tmp_path)


def test_reserved_and_shadowing_attributes_are_refused(tmp_path):
    buf = io.BytesIO()
    tropfx.save(nn.Sequential(nn.Linear(2, 2)), buf)
    w = Witness(tmp_path)
    for attr in ("forward", "_parameters", "__class__", "extra_repr", "a b"):
        def edit(recipe, attr=attr):
            recipe["root"]["children"]["0"]["attrs"] = {"$": "dict", "v": [[attr, 1]]}
        assert_refused(tampered(buf.getvalue(), edit), w, "reserved attributes", tmp_path)


def test_reports_with_terminal_escapes_or_wrong_types_are_refused(legit, tmp_path):
    w = Witness(tmp_path)
    for report in ({"model": "\x1b]0;pwned\x07\x1b[2J"}, {"rows": [{"stage": "\x1b[31m"}]},
                   {"rows": 5}, {"rows": [{"skipped": [1]}]}, [1]):
        data = tampered(legit, lambda r, rep=report: r["root"].update(report=rep))
        assert_refused(data, w, "report of the root module is invalid", tmp_path)


def test_register_serializable_refuses_io_and_state_functions():
    for fn in (torch.load, torch.set_num_threads, torch.manual_seed, torch.compile):
        with pytest.raises(SerializationError, match="never call it"):
            tropfx.register_serializable(fn)


# --- structure: aliases, nesting, sizes ------------------------------------------------------

@pytest.mark.parametrize("alias", ["", "lin", "lin.0.x", 7, None])
def test_aliases_to_ancestors_or_unknown_modules_are_refused(legit, tmp_path, alias):
    w = Witness(tmp_path)

    def edit(recipe):  # {"alias": ""}: the child is the root itself, repr / .to() recurse forever
        recipe["root"]["children"]["lin"]["children"]["0"] = {"alias": alias}

    assert_refused(tampered(legit, edit), w, "aliases", tmp_path)


def test_deep_nesting_is_refused(legit, tmp_path):
    w = Witness(tmp_path)
    blob = blob_of(legit)
    deep = "[" * 100_000 + "]" * 100_000
    blob["recipe"] = blob["recipe"].replace('"kwargs": {"$": "dict", "v": []}',
                                            f'"kwargs": {deep}', 1)
    assert_refused(write(blob), w, "nested 200001 deep|nested", tmp_path)
    # Deep module trees too (each level: {"children": {"m": ...}}).
    recipe = json.loads(blob_of(legit)["recipe"])
    leaf = recipe["root"]["children"]["lin"]
    for _ in range(150):
        leaf = {"kind": "module", "class": "torch.nn.modules.container.Sequential",
                "config": {"$": "dict", "v": []}, "attrs": {"$": "dict", "v": []},
                "training": False, "params": {}, "buffers": {}, "non_persistent": [],
                "children": {"m": leaf}}
    recipe["root"]["children"]["lin"] = leaf
    blob["recipe"] = json.dumps(recipe)
    assert_refused(write(blob), w, "nested", tmp_path)


def _recompressed(data):
    """The same archive with deflated records: what torch.load also reads."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


def test_zip_bomb_is_refused_before_torch_load_reads_it(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2))
    model.register_buffer("zeros", torch.zeros(4 << 20))  # 16 MiB of zeros: deflates to ~16 KiB
    buf = io.BytesIO()
    tropfx.save(model, buf)
    bomb = _recompressed(buf.getvalue())
    assert len(bomb) < (1 << 20) // 8
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    w = Witness(tmp_path)
    with pytest.raises(SerializationError, match=r"expand to .* bytes, more than max_bytes"):
        tropfx.load(io.BytesIO(bomb))
    assert calls == [], "torch.load read the records"
    w.assert_untouched()
    # A file one trusts loads with a raised limit.
    loaded = tropfx.load(io.BytesIO(bomb), max_bytes=64 << 20)
    assert torch.equal(loaded.zeros, model.zeros)


def test_declared_shapes_and_records_must_agree(legit, tmp_path):
    w = Witness(tmp_path)

    def edit(recipe):
        recipe["tensors"]["scale"]["shape"] = [4]

    assert_refused(tampered(legit, edit), w, "recipe declares", tmp_path)
    blob = blob_of(legit)
    blob["tensors"]["scale"] = torch.ones(2, 2)  # a record swapped for another shape
    assert_refused(write(blob), w, "recipe declares", tmp_path)
    blob = blob_of(legit)
    blob["tensors"]["scale"] = torch.ones(1).expand(3)  # 3 elements from 4 stored bytes ...
    recipe = json.loads(blob["recipe"])
    recipe["tensors"]["scale"]["shape"] = [3]
    blob["recipe"] = json.dumps(recipe)
    assert_refused(write(blob), w, "expanded view", tmp_path)
    blob = blob_of(legit)
    blob["tensors"]["scale"] = "not a tensor"
    assert_refused(write(blob), w, "not a plain dense tensor", tmp_path)


def test_saving_an_expanded_buffer_stores_what_it_describes():
    model = nn.Sequential(nn.Linear(3, 3))
    model.register_buffer("wide", torch.ones(1).expand(3))
    buf = io.BytesIO()
    tropfx.save(model, buf)
    buf.seek(0)
    assert torch.equal(tropfx.load(buf).wide, torch.ones(3))


# --- damaged files ---------------------------------------------------------------------------

def test_invalid_json_bogus_devices_and_wrong_entries_are_refused(legit, tmp_path):
    w = Witness(tmp_path)
    blob = blob_of(legit)
    for text, match in [("{not json", "not valid JSON"), ("[]", "no root module"),
                        ('{"root": 1}', "no root module"), ("1e999999", "no root module"),
                        ("9" * 5000, "not valid JSON"), ('{"root": {"kind": "exec"}}', "unknown kind")]:
        blob["recipe"] = text
        assert_refused(write(blob), w, match, tmp_path)
    for device in ("bogus", "cuda:-7", "meta:0:1", 3):
        data = tampered(legit, lambda r, d=device: node(r, "call_function").update(
            args={"$": "tuple", "v": [{"$": "device", "v": d}]}))
        assert_refused(data, w, "device|unknown value", tmp_path)
    for change in ({"version": 99}, {"version": "1"}, {"extra": 1}, {"tensors": [1]},
                   {"recipe": b"{}"}, {"format": "other"}):
        blob = {**blob_of(legit), **change}
        assert_refused(write(blob), w, "version|corrupt|not a tropfx module file", tmp_path)


def test_truncated_files_are_refused(legit, tmp_path):
    w = Witness(tmp_path)
    for cut in sorted({1, 10, 100, len(legit) // 3, len(legit) // 2, len(legit) - 200,
                       len(legit) - 22, len(legit) - 1}):
        with pytest.raises(SerializationError):
            tropfx.load(io.BytesIO(legit[:cut]))
    w.assert_untouched()


def test_bit_flipped_files_are_refused_or_harmless(legit, tmp_path):
    """A flip in the recipe or the zip structure is refused (the pickle record's CRC is checked);
    a flip in a weight's bytes loads a model with that weight changed, as torch.load does."""
    w = Witness(tmp_path)
    rng = random.Random(0)
    outcomes = {"refused": 0, "loaded": 0}
    x = torch.randn(2, 3)
    for _ in range(300):
        data = bytearray(legit)
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
        try:
            model = tropfx.load(io.BytesIO(bytes(data)))
        except SerializationError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        model(x)  # computes (maybe different numbers); never code
    w.assert_untouched()
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes

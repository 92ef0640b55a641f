"""The tropfx command line: pass specs, compile / summary / bench / passes, and its errors."""

import json
import textwrap

import pytest
import torch

import tropfx
from tropfx import passes as tp
from tropfx.cli import available_passes, build_passes, main, parse_pass_specs
from tropfx.errors import InputError

MODEL_PY = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(width * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


    def build(width=4, seed=0):
        torch.manual_seed(seed)
        return Net(width)


    def broken():
        raise ValueError("the factory failed")
''')


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(MODEL_PY)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- pass specs -----------------------------------------------------------------------------

def test_pass_specs_split_on_top_level_commas_and_colons_only():
    specs = parse_pass_specs([
        "fuse_batchnorm, relu_to_maxplus:mode=sparse:k=2",
        "prune_l1:ratio=0.5:scope='layer':include=['head.*', 'a,b:c']:exclude=(\"x\",)",
    ])
    assert specs == [
        ("fuse_batchnorm", {}),
        ("relu_to_maxplus", {"mode": "sparse", "k": 2}),
        ("prune_l1", {"ratio": 0.5, "scope": "layer", "include": ["head.*", "a,b:c"],
                      "exclude": ("x",)}),
    ]


def test_a_bare_word_for_a_sequence_option_becomes_a_one_element_list():
    (spec,) = parse_pass_specs(["prune_l1:ratio=0.25:include=features.*"])
    assert spec[1] == {"ratio": 0.25, "include": ["features.*"]}
    (built,) = build_passes(["prune_l1:ratio=0.25:include=features.*"])
    assert built == tp.prune_l1(0.25, include=["features.*"])


@pytest.mark.parametrize("text, message", [
    ("nope", r"unknown pass 'nope'; valid passes: .*fuse_batchnorm.*prune_l1"),
    ("prune_l1", r"pass prune_l1 needs ratio=\.\.\.; options: ratio \(required\), scope='global'"),
    ("prune_l1:ratio=0.5:colour=red", r"pass prune_l1: unknown option 'colour'; options: ratio"),
    ("prune_l1:ratio=0.5:layer", r"unknown 'layer' \(expected KEY=VALUE\)"),
    ("prune_l1:ratio=0.5,scope=layer", r"separate options with ':', and passes with ','"),
    ("prune_l1:ratio=[0.5", r"unbalanced brackets"),
    ("prune_l1:ratio=0.5:scope='layer", r"unbalanced quote"),
    ("prune_l1:ratio=1 + 2", r"cannot read '1 \+ 2'; use a Python literal"),
])
def test_bad_pass_specs_say_what_is_valid(text, message):
    with pytest.raises(InputError, match=message):
        parse_pass_specs([text])


def test_pass_factory_errors_become_input_errors():
    with pytest.raises(InputError, match=r"ratio=2 must be in \[0, 1\)"):
        build_passes(["prune_l1:ratio=2"])
    with pytest.raises(InputError, match="relu_to_maxplus: mode='fancy'"):
        build_passes(["relu_to_maxplus:mode=fancy"])


def test_passes_are_found_dynamically(monkeypatch, capsys):
    from tropfx import passes

    @tropfx.graph_pass(exact=True)
    def drop_nothing(gm):
        return tropfx.PassResult(gm, False)

    def drop_nothing_factory(strength: float = 1.0):
        """Do nothing, exactly."""
        return drop_nothing

    monkeypatch.setattr(passes, "drop_nothing", drop_nothing_factory, raising=False)
    monkeypatch.setattr(passes, "__all__", [*passes.__all__, "drop_nothing"])
    assert "drop_nothing" in available_passes()
    assert build_passes(["drop_nothing:strength=2"]) == [drop_nothing]
    code, out, _ = run(capsys, "passes")
    assert code == 0 and "drop_nothing" in out and "strength=1.0" in out
    assert "Do nothing, exactly." in out
    # every factory in tropfx.passes.__all__ is listed, and no class
    assert all(name in out for name in available_passes())
    assert "PruneL1" not in out


# --- compile, summary -----------------------------------------------------------------------

def test_compile_with_a_checkpoint_saves_the_module_and_the_report(model_file, tmp_path, capsys):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("mymodel_ref", model_file)
    ref = module_from_spec(spec)
    spec.loader.exec_module(ref)
    trained = ref.build(width=4, seed=1)
    with torch.no_grad():
        trained.bn.running_var.uniform_(0.5, 2.0)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, ckpt)
    out_file, report = tmp_path / "net.tropfx", tmp_path / "report.json"

    code, out, err = run(capsys, "compile", f"{model_file}:build(width=4)", "--checkpoint", ckpt,
                         "--example-shape", "2,1,8,8", "--passes", "fuse_batchnorm,relu_to_maxplus",
                         "--pass", "maxpool_to_dilation", "--pass", "prune_l1:ratio=0.3",
                         "--out", out_file, "--report", report)
    assert code == 0, err
    assert "tropfx report: Net" in out and f"saved to {out_file}" in out
    stages = [r["stage"] for r in json.loads(report.read_text())["rows"]]
    assert stages == ["traced", "fuse_batchnorm", "relu_to_maxplus", "maxpool_to_dilation",
                      "prune_l1"]
    loaded = tropfx.load(out_file)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = tropfx.compile(trained.eval(), [tp.fuse_batchnorm(), tp.relu_to_maxplus(),
                                               tp.maxpool_to_dilation(), tp.prune_l1(0.3)],
                              example_inputs=(x,))
    assert torch.equal(loaded(x), expected(x))  # the checkpoint's weights, the same passes

    code, out, err = run(capsys, "summary", out_file, "--report", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "measured on tensor(2, 1, 8, 8)" in out  # shapes taken from the saved report
    assert "SparseMaxPlus" in out and "Dilation2d" in out and "tropfx report" in out
    total = json.loads((tmp_path / "s.json").read_text())["total"]
    assert total["params"] == sum(p.numel() for p in loaded.parameters())
    assert total["maxplus_ops"] > 0


def test_summary_of_a_factory_model(capsys):
    code, out, err = run(capsys, "summary", "tropfx.demo:SmallCNN(channels=4)",
                         "--example-shape", "1,1,8,8")
    assert code == 0, err
    assert "tropfx summary: SmallCNN (measured on tensor(1, 1, 8, 8))" in out
    assert "features.0" in out and "Conv2d" in out


def test_compile_without_shapes_notes_what_is_missing(model_file, capsys):
    code, out, err = run(capsys, "compile", f"{model_file}:build", "--passes", "fuse_batchnorm",
                         "--quiet")
    assert code == 0 and out == "" and "no --example-shape" in err


def test_dtype_converts_model_and_inputs(model_file, tmp_path, capsys):
    path = tmp_path / "f64.tropfx"
    code, _, err = run(capsys, "compile", f"{model_file}:build", "--example-shape", "1x1x8x8",
                       "--dtype", "float64", "--passes", "fuse_batchnorm", "--out", path)
    assert code == 0, err
    assert next(tropfx.load(path).parameters()).dtype == torch.float64


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["compile", "tropfx.demo:SmallCNN", "--passes", "nope"], "unknown pass 'nope'; valid passes:"),
    (["compile", "tropfx.demo"], "'tropfx.demo' is neither a file (a module saved by tropfx "
                                 "compile --out) nor MODULE:FACTORY"),
    (["compile", "no_such_module_xyz:Net"], "cannot import 'no_such_module_xyz'"),
    (["compile", "tropfx.demo:Nope"], "tropfx.demo has no attribute Nope"),
    (["compile", "tropfx.demo:load_digits"], "gave a tuple, not an nn.Module"),
    (["compile", "tropfx.demo:SmallCNN", "--checkpoint", "missing.pt"], "no such checkpoint"),
    (["compile", "tropfx.demo:SmallCNN", "--example-shape", "1,a"], "expected sizes like"),
    (["compile", "tropfx.demo:SmallCNN", "--dtype", "float99"], "not a torch dtype"),
    (["compile", "tropfx.demo:SmallCNN", "--example-shape", "1,3,8,8"],
     "example inputs do not fit the model"),
    (["summary", "missing.tropfx"], "'missing.tropfx' is neither a file"),
    (["compile", "path/to/missing.py:build"], "no such file: path/to/missing.py"),
    (["bench", "nope"], "no benchmark 'nope'"),
    (["bench", "tropfx.demo:SmallCNN"], "needs --example-shape"),
])
def test_errors_are_one_line_without_traceback(argv, message, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("tropfx: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_unexpected_exceptions_are_one_line_too_and_debug_shows_them(model_file, capsys):
    code, _, err = run(capsys, "compile", f"{model_file}:broken")
    assert code == 1
    assert err == ("tropfx: error: ValueError: the factory failed (run with --debug for the "
                   "traceback)\n")
    with pytest.raises(ValueError, match="the factory failed"):
        main(["compile", f"{model_file}:broken", "--debug"])  # --debug after the command too
    with pytest.raises(InputError):
        main(["--debug", "compile", "tropfx.demo:SmallCNN", "--passes", "nope"])


def test_wrong_checkpoint_says_what_does_not_fit(model_file, tmp_path, capsys):
    ckpt = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    code, _, err = run(capsys, "compile", f"{model_file}:build", "--checkpoint", ckpt)
    assert code == 1 and "does not fit Net: missing ['conv.weight'" in err
    torch.save({"not": "weights"}, ckpt)
    code, _, err = run(capsys, "compile", f"{model_file}:build", "--checkpoint", ckpt)
    assert code == 1 and "holds no state dict" in err


@pytest.mark.parametrize("command", ["compile", "summary", "bench", "passes", "demo", "kernels"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: tropfx {command}" in out
    if command in ("compile", "bench"):
        assert "NAME[:KEY=VALUE[:KEY=VALUE...]]" in out


# --- bench ----------------------------------------------------------------------------------

def test_bench_lists_and_runs_scripts_with_their_arguments(tmp_path, monkeypatch, capfd):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_echo.py").write_text('"""Echo its arguments."""\nimport sys\n'
                                          'print("echo", sys.argv[1:])\n')
    monkeypatch.setattr("tropfx.cli.benchmarks_dir", lambda: folder)
    assert main(["bench"]) == 0
    assert "echo          Echo its arguments." in capfd.readouterr().out
    assert main(["bench", "echo", "--", "--repeats", "1"]) == 0
    assert "echo ['--repeats', '1']" in capfd.readouterr().out
    assert main(["bench", "--", "x"]) == 1
    assert "need a benchmark name" in capfd.readouterr().err


def test_the_real_benchmarks_are_listed(capsys):
    code, out, _ = run(capsys, "bench", "--list")
    assert code == 0 and "maxplus" in out and "compile" in out


def test_bench_times_a_model_before_and_after_compiling(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", "tropfx.demo:SmallCNN(channels=4)", "--example-shape",
                         "4,1,8,8", "--passes", "fuse_batchnorm,relu_to_maxplus", "--repeats", "3",
                         "--warmup", "1", "--json", path)
    assert code == 0, err
    assert "passes: fuse_batchnorm, relu_to_maxplus" in out
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"eager", "traced", "compiled"}
    assert rows["eager"]["speedup"] == 1.0 and rows["compiled"]["maxplus"] > 0
    assert rows["compiled"]["params"] < rows["eager"]["params"] + 100
    code, out, err = run(capsys, "bench", "tropfx.demo:SmallCNN(channels=4)", "--example-shape",
                         "4,1,8,8", "--repeats", "2", "--warmup", "0", "--backward")
    assert code == 0 and "forward + backward" in out

"""The command line's error policy: one line for recognised errors, a traceback and a request to
report it for bugs, Ctrl-C as exit 130, outputs checked for writability before any long work."""
import argparse
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from cgnet import CGNet, save_checkpoint
import cgnet.cli
from cgnet.cli import COMMAND, COMMANDS, Command, main, make_parser, subcommand_parsers
from cgnet.common import CGNetError, InputError, inductor_cache
from cgnet.data import listset
from cgnet.data.catalog import CAMVID
from cgnet.options import add_checkpoint_arg
from cgnet.preprocess import make_spec


@pytest.fixture
def tiny_ckpt(tmp_path):
    return save_checkpoint(tmp_path / "m.pt", CGNet(11, m=2, n=2), None)


def test_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    def broken(args):
        return 1 // 0
    monkeypatch.setattr(COMMAND["info"], "run", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert err.rstrip().splitlines()[-1] == ("cgnet info: unexpected error (a bug in cgnet, or a problem it does "
                                             "not recognise): please report it with the traceback above")


def test_recognised_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.pt"
    assert main(["info", "--checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err == f"cgnet info: error: {missing}: no such file\n"
    assert main(["info", "--checkpoint", str(missing), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith(f"cgnet info: error: {missing}: no such file\n")
    monkeypatch.setenv("CGNET_DEBUG", "1")
    assert main(["info", "--checkpoint", str(missing)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(COMMAND["info"], "run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "cgnet info: interrupted\n"


def test_worker_data_error_is_the_same_one_line_as_without_workers(camvid, tmp_path, capsys):
    root = tmp_path / "copy"  # the shared fixture must stay intact
    shutil.copytree(camvid, root)
    (root / "val" / "0001TP_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    messages = []
    for workers in ("0", "1"):
        assert main(["eval", "--data-root", str(root), "--dataset", "camvid", "--split", "val",
                     "--workers", workers]) == 2
        messages.append(capsys.readouterr().err.splitlines()[-1].split("\r")[-1])
    expected = (f"cgnet eval: error: {root / 'camvid_val_list.txt'}:2: cannot read the image "
                f"{root / 'val' / '0001TP_000001.png'} (corrupt or not an image)")
    assert messages == [expected, expected]


def test_loader_worker_error_keeps_its_type_and_message(camvid, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(camvid, root)
    (root / "trainannot" / "0001TP_000002.png").write_bytes(b"not a png")
    ds = listset.SegDataset(root, "camvid_train_list.txt", CAMVID, make_spec("standard"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(CGNetError) as caught:
        list(loader)
    assert str(caught.value) == (f"{root / 'camvid_train_list.txt'}:3: cannot read label "
                                 f"{root / 'trainannot' / '0001TP_000002.png'} (corrupt or not an image)")


def test_missing_file_in_a_list_is_found_before_any_frame_is_read(camvid, tmp_path, capsys, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(camvid, root)
    (root / "val" / "0001TP_000002.png").unlink()
    reads = []
    real = listset.read_rgb
    monkeypatch.setattr(listset, "read_rgb", lambda *a, **k: reads.append(a) or real(*a, **k))
    assert main(["eval", "--data-root", str(root), "--dataset", "camvid", "--split", "val", "--workers", "0"]) == 2
    assert capsys.readouterr().err.endswith(f"{root / 'camvid_val_list.txt'}:3: image "
                                            f"{root / 'val' / '0001TP_000002.png'} does not exist\n")
    assert reads == []


def _unwritable(tmp_path):
    """An output path that cannot be created, even by root: a file stands where a folder must be."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


@pytest.mark.parametrize("command", ["eval-save-dir", "eval-json", "predict", "export"])
def test_unwritable_outputs_fail_before_any_work(command, camvid, tiny_ckpt, tmp_path, capsys, monkeypatch):
    target = _unwritable(tmp_path)
    work = []
    monkeypatch.setattr("cgnet.engine.commands.setup_eval", lambda *a: work.append(a))
    monkeypatch.setattr("cgnet.deploy.predict.make_predictor", lambda *a, **k: work.append(a))
    monkeypatch.setattr("cgnet.deploy.export_command.export", lambda *a, **k: work.append(a))
    frame = camvid / "val" / "0001TP_000000.png"
    argv, option = {
        "eval-save-dir": (["eval", "--checkpoint", str(tiny_ckpt), "--save-dir", str(target)], "--save-dir"),
        "eval-json": (["eval", "--checkpoint", str(tiny_ckpt), "--json", str(target / "s.json")], "--json"),
        "predict": (["predict", str(frame), "--checkpoint", str(tiny_ckpt), "--out", str(target)], "--out"),
        "export": (["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--out", str(target / "m.onnx")],
                   "--out"),
    }[command]
    assert main(argv) == 2
    shown = target / "s.json" if command == "eval-json" else target / "m.onnx" if command == "export" else target
    assert capsys.readouterr().err == f"cgnet {argv[0]}: error: {option} {shown}: cannot write there (Not a directory)\n"
    assert work == [] and not target.exists()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--workers", "-1"], "cgnet eval: error: argument --workers: must be at least 0, got '-1'"),
    (["test", "--workers", "two"], "cgnet test: error: argument --workers: expected a whole number, got 'two'"),
    (["demo", "--frames", "0"], "cgnet demo: error: argument --frames: must be at least 1, got '0'"),
    (["bench", "--runs", "0"], "cgnet bench: error: argument --runs: must be at least 1, got '0'"),
    (["bench", "--warmup", "-1"], "cgnet bench: error: argument --warmup: must be at least 0, got '-1'"),
    (["bench", "--agreement-frames", "1.5"],
     "cgnet bench: error: argument --agreement-frames: expected a whole number, got '1.5'"),
    (["predict", "a.png", "--alpha", "1.5"], "cgnet predict: error: argument --alpha: must be between 0 and 1, got '1.5'"),
    (["predict", "a.png", "--alpha", "nan"], "cgnet predict: error: argument --alpha: expected a finite number, got 'nan'"),
    (["serve", "--alpha", "-0.1"], "cgnet serve: error: argument --alpha: must be between 0 and 1, got '-0.1'"),
    (["serve", "--max-upload-mb", "0"], "cgnet serve: error: argument --max-upload-mb: must be more than 0, got '0'"),
    (["serve", "--max-video-frames", "0"], "cgnet serve: error: argument --max-video-frames: must be at least 1, got '0'"),
    (["info", "--num-classes", "0"], "cgnet info: error: argument --num-classes: must be at least 1, got '0'"),
    (["eval", "--num-classes", "-3"], "cgnet eval: error: argument --num-classes: must be at least 1, got '-3'"),
    (["data", "stats", "--workers", "-1"], "cgnet data stats: error: argument --workers: must be at least 0, got '-1'"),
    (["data", "show", "--count", "0"], "cgnet data show: error: argument --count: must be at least 1, got '0'"),
    (["data", "show", "--crop", "4"], "cgnet data show: error: argument --crop: must be at least 8, got '4'"),
])
def test_a_number_out_of_range_is_one_error_line_and_exit_2(argv, message, capsys):
    """Every command's numeric options are checked by the parser, before any work or file access."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.rstrip("\n").splitlines()[-1] == message


def test_the_commands_import_the_litert_converter_only_inside_the_export():
    """JAX (LiteRT's converter) makes forking unsafe; loading cgnet's commands must not import it."""
    import subprocess
    import sys
    code = ("import sys, cgnet.cli, cgnet.deploy.export, cgnet.deploy.formats, cgnet.deploy.mobile; "
            "print(sorted(m for m in ('jax', 'litert_torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "[]\n"


def test_compiled_kernels_are_kept_in_cgnets_cache_folder_per_lowered_capability(monkeypatch, tmp_path, capsys):
    """Without TORCHINDUCTOR_CACHE_DIR, cgnet's commands compile into $CGNET_CACHE/inductor (not /tmp,
    which a reboot may empty), and under ATEN_CPU_CAPABILITY=avx2 into a folder of that capability
    (a shared cache gave a compiled AVX2 step NaN gradients); the user's own setting stays."""
    monkeypatch.setenv("CGNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert inductor_cache() == str(tmp_path / "cache" / "inductor") == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    assert main(["plot", str(tmp_path / "no-run")]) == 2  # any command goes through main's set-up first
    capsys.readouterr()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor_avx2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stays
    assert inductor_cache() is None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


SHARED_OPTIONS = ("--checkpoint", "--backend", "--precision", "--device", "--data-root")


def test_each_shared_option_is_defined_once():
    """`--checkpoint` and the other shared options are added in one place, cgnet/options.py, with
    one help text each (cgnet train's come from its TrainConfig fields)."""
    package = Path(__file__).resolve().parents[1] / "src" / "cgnet"
    for option in SHARED_OPTIONS:
        found = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 for _ in re.finditer(rf"add_argument\(\s*\"{option}\"", p.read_text())]
        assert found == ["options.py"], (option, found)


def test_one_table_wires_every_command():
    """Each command's options and function come from the module of its concern, named alike."""
    parser = make_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert list(commands) == [c.name for c in COMMANDS]
    for command in COMMANDS:
        assert command.add_args.__name__.startswith("add_") and command.run.__name__.startswith("cmd_"), command
        assert command.run.__module__ != "cgnet.cli", command
    assert {c.name for c in COMMANDS if not c.heavy} == {"info", "plot", "data", "weights"}
    for p in subcommand_parsers(parser):  # every command and every data tool and weights action takes --debug
        assert "--debug" in p._option_string_actions, p.prog


def test_a_command_added_as_the_architecture_page_says_runs_with_the_shared_options(monkeypatch, capsys):
    """docs/architecture.md's "A command" and "A shared option", walked: two functions and a row."""
    def add_hello_args(p):
        add_checkpoint_arg(p, default="none: hello needs no model")

    def cmd_hello(args):
        if args.checkpoint == "bad":
            raise InputError("--checkpoint bad: not a checkpoint")
        print(f"hello {args.checkpoint}")
        return 0

    monkeypatch.setattr("cgnet.cli.COMMANDS", [*COMMANDS, Command("hello", "say hello", add_hello_args, cmd_hello,
                                                                  False)])
    monkeypatch.setitem(COMMAND, "hello", cgnet.cli.COMMANDS[-1])
    assert main(["hello", "--checkpoint", "x.pt"]) == 0 and capsys.readouterr().out == "hello x.pt\n"
    assert main(["hello", "--checkpoint", "bad", "--debug"]) == 2
    assert capsys.readouterr().err.endswith("cgnet hello: error: --checkpoint bad: not a checkpoint\n")
    parser = make_parser()
    hello = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["hello"]
    help_text = " ".join(hello.format_help().split())
    assert ("--checkpoint FILE the model: a checkpoint of cgnet train, of the original release or of "
            "mmsegmentation, or named weights (cgnet weights list) (default: none: hello needs no model)") in help_text

"""The training options: one source (TrainConfig's fields) for the parser, the checks and the
--resume policy; --help groups; recipes from --config files (TOML, JSON, a run's own config.json)."""
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from cgnet.cli import main, make_parser
from cgnet.engine.config import (DEFINES, FRESH, GROUPS, NOT_INHERITED, POLICIES, ConfigError,
                                 TrainConfig, cpu_speed_defaults, flag_of, resolve_config)
from cgnet.engine.resume import compare_for_resume
from helpers.training import TINY, train


def test_every_option_has_a_resume_policy_a_group_and_help():
    for f in fields(TrainConfig):
        assert f.metadata.get("resume") in POLICIES, f"{f.name} has no --resume policy"
        if flag_of(f) is not None and f.metadata["help"] is not None and f.name != "preset":
            assert f.metadata["group"] in GROUPS, f"{f.name} has no --help group"
    # the lists --resume uses are derived from the fields, not written by hand
    assert {"lr", "crop", "seed", "m", "n", "classes", "init", "freeze"} <= \
        {f.name for f in fields(TrainConfig) if f.metadata["resume"] == DEFINES}
    assert set(NOT_INHERITED) == {"out", "max_iters", "resolved_preprocess", "speed_choice"}


def test_a_field_defining_the_run_is_refused_on_resume_and_one_that_does_not_is_accepted():
    saved = TrainConfig(device="cpu").to_dict()
    for f in fields(TrainConfig):
        if f.metadata["resume"] != DEFINES or not isinstance(f.default, (int, float)) or isinstance(f.default, bool):
            continue
        changed = TrainConfig(device="cpu", **{f.name: f.default + 1})
        with pytest.raises(ConfigError, match=r"^--resume: the run was trained with "):
            compare_for_resume(saved, changed)
    assert compare_for_resume(saved, TrainConfig(device="cpu", val_every=3)) == ["--val-every 10 -> 3"]


def test_help_lists_the_options_in_named_groups():
    text = make_parser()._subparsers._group_actions[0].choices["train"].format_help()
    headings = [line.rstrip(":") for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[-6:] == ["recipe", "data", "schedule", "model and loss",
                             "speed (how it runs; may change on --resume)", "output"]
    section = text.split("\nschedule:\n")[1].split("\n\n")[0]
    assert "--batch-size" in section and "--lr" in section and "--channels-last" not in section
    # set only by presets and config files: no option
    assert "--betas" not in text and "--resolved-preprocess" not in text


def options_doc():
    """scripts/train_options_doc.py as a module."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_options_doc.py"
    spec = importlib.util.spec_from_file_location("train_options_doc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_option_tables_are_the_ones_the_fields_give():
    doc = options_doc()
    text = doc.DOC.read_text()
    assert doc.stale_blocks(text) == [], "docs/training.md is stale: run python scripts/train_options_doc.py"
    # every option of `cgnet train --help` (but the recipe's and --debug) is in the table once, in its group
    parser = make_parser()._subparsers._group_actions[0].choices["train"]
    block = text.split("<!-- begin options")[1].split("<!-- end options -->")[0]
    tables = dict(zip(*[iter(re.split(r"^\*\*(.+)\*\*$", block, flags=re.M)[1:])] * 2))
    for group in parser._action_groups:
        if group.title not in tables:
            assert group.title in ("recipe", "options", "positional arguments"), group.title
            continue
        rows = [line.split(" | ")[0] for line in tables[group.title].splitlines() if line.startswith("| `")]
        assert [row.split("`")[1].split(" ")[0] for row in rows] == [a.option_strings[0] for a in group._group_actions]
    resume = text.split("<!-- begin resume")[1].split("<!-- end resume -->")[0]
    defining = resume.split("**Defines the run**")[1].split("\n")[0]
    assert "`--init`" in defining and "`--freeze`" in defining and "`--lr`" in defining
    assert "`--max-iters`" in resume.split("**Not inherited**")[1] and "--max-iters" not in defining


def test_the_options_doc_script_rewrites_a_stale_block_and_checks_it(tmp_path, capsys):
    doc = options_doc()
    stale = tmp_path / "training.md"
    text = doc.DOC.read_text()
    stale.write_text(text.replace("| `--lr LR` |", "| `--learning-rate LR` |"))
    assert doc.main(["--check", "--doc", str(stale)]) == 1
    assert capsys.readouterr().err == (f"{stale}: stale generated block(s) options; run python "
                                       "scripts/train_options_doc.py\n")
    assert doc.main(["--doc", str(stale)]) == 0 and stale.read_text() == text
    assert doc.main(["--check", "--doc", str(stale)]) == 0
    stale.write_text("# no markers\n")
    assert doc.main(["--check", "--doc", str(stale)]) == 2
    assert "no '<!-- begin options (generated by scripts/train_options_doc.py) -->'" in capsys.readouterr().err


def parse(*argv):
    return make_parser().parse_args(["train", *argv])


def test_a_config_file_sits_between_the_preset_and_the_command_line(camvid, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('preset = "camvid"\nepochs = 5\ncrop = [64, 48]\nlr = 2e-3\nclass_weights = false\n')
    cfg = resolve_config(parse("--config", str(recipe), "--data-root", str(camvid), "--lr", "0.004",
                               "--train-split", "train", "--device", "cpu"))
    assert (cfg.preset, cfg.batch_size) == ("camvid", 8)     # from the preset
    assert (cfg.epochs, cfg.crop, cfg.class_weights) == (5, (64, 48), False)  # the file over the preset
    assert cfg.lr == 0.004 and cfg.train_split == "train"    # the command line over the file


@pytest.mark.parametrize("name, text, message", [
    ("r.json", '{"epochs": 5, "lr": "fast"}', "--config {path}: lr = \"fast\" is not a float"),
    ("r.json", '{"epoch": 5}', "--config {path}: unknown setting 'epoch'"),
    ("r.json", '{"crop": [1, 2, 3]}', "--config {path}: crop = [1, 2, 3] is not a tuple[int, int]"),
    ("r.json", '{"class_weights": 1}', "--config {path}: class_weights = 1 is not a bool"),
    ("r.json", '[1, 2]', "--config {path}: expected a table of settings"),
    ("r.json", '{"epochs": }', "--config {path}: not valid JSON (Expecting value: line 1 column 12 (char 11))"),
    ("r.toml", 'epochs = ', "--config {path}: not valid TOML (Invalid value (at end of document))"),
    ("r.json", '{"preset": "camvid-gpu"}', "--config {path}: unknown preset 'camvid-gpu' (camvid, camvid-cpu, "
                                           "cityscapes, cityscapes-trainval)"),
])
def test_a_bad_config_file_is_one_line(camvid, tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path), "--data-root", str(camvid), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"cgnet train: error: {message.format(path=path)}\n"
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "no.toml"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"cgnet train: error: --config {tmp_path}/no.toml: no such file\n"


@pytest.mark.slow
def test_a_runs_own_config_json_starts_the_same_recipe(camvid, tmp_path):
    train(camvid, tmp_path / "first", "--epochs", "2", "--max-iters", "2", "--lr", "0.002", "--seed", "4")
    first = json.loads((tmp_path / "first" / "config.json").read_text())
    assert main(["train", "--config", str(tmp_path / "first" / "config.json"), "--out", str(tmp_path / "second"),
                 "--max-iters", "2"]) == 0
    second = json.loads((tmp_path / "second" / "config.json").read_text())
    # where it writes differs; and the first run's CPU speed choice is the second's given settings
    fresh = ("out", "speed_choice")
    assert {k: v for k, v in second.items() if k not in fresh} == {k: v for k, v in first.items() if k not in fresh}
    assert second["speed_choice"] is None
    assert second["out"] == str(tmp_path / "second") and second["lr"] == 0.002 and second["seed"] == 4
    assert TINY[TINY.index("--blocks") + 1:TINY.index("--blocks") + 3] == ["2", "2"] and [second["m"], second["n"]] \
        == [2, 2]


def test_fresh_settings_are_not_taken_from_a_config_file(camvid, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"out": "elsewhere", "max_iters": 3, "resolved_preprocess": {"mode": "standard"},
                                "epochs": 9}))
    cfg = resolve_config(parse("--config", str(path), "--data-root", str(camvid), "--device", "cpu"))
    assert cfg.epochs == 9 and cfg.out == TrainConfig.out and cfg.max_iters is None and cfg.resolved_preprocess is None
    assert all(next(f for f in fields(TrainConfig) if f.name == n).metadata["resume"] == FRESH for n in NOT_INHERITED)


@pytest.mark.parametrize("capability, expected", [
    ("AVX512", (True, True)),    # measured 1.88-2.31x a plain eager loop there
    ("AVX2", (True, True)),      # 1.48x, against 1.10x eager NCHW
    ("DEFAULT", (False, False)),
    ("ZVECTOR", (False, False)),
])
def test_cpu_speed_defaults_follow_the_cpus_vector_instructions(capability, expected):
    channels_last, compile, why = cpu_speed_defaults(capability)
    assert (channels_last, compile) == expected
    assert why.startswith(f"{capability} CPU")


@pytest.mark.parametrize("native_bf16, given, amp, flags", [
    (True, [], "bf16", "--channels-last --compile --amp bf16"),
    (False, [], "off", "--channels-last --compile --amp off"),
    (True, ["--amp", "off"], "off", "--channels-last --compile"),  # what the user gives is kept, and not listed
    (False, ["--amp", "bf16"], "bf16", "--channels-last --compile"),
])
def test_the_cpus_bf16_decides_the_default_precision_and_the_speed_line_says_so(monkeypatch, camvid, native_bf16,
                                                                                  given, amp, flags):
    import cgnet.engine.config as config
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(config.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cpu", *given))
    assert cfg.amp == amp
    assert cfg.speed_choice.endswith(f"; by default here: {flags}")
    # the bf16 reason is given only where the default chose bf16
    assert (config.MEASURED_CPU_BF16 in cfg.speed_choice) == (native_bf16 and not given)


@pytest.mark.parametrize("native_bf16, capability, amp", [
    (True, "AVX512", "bf16"),
    (True, "AVX2", "off"),     # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU (the AVX2 emulation): no bf16 kernels
    (False, "AVX512", "off"),
    (False, "AVX2", "off"),
    (True, "DEFAULT", "off"),
])
def test_bf16_is_the_default_only_with_native_bf16_and_avx512_kernels(native_bf16, capability, amp):
    from cgnet.engine.config import MEASURED_CPU_BF16, cpu_amp_default
    assert cpu_amp_default(native_bf16, capability) == (amp, MEASURED_CPU_BF16 if amp == "bf16" else None)


def test_a_cpu_run_without_speed_options_gets_this_cpus_defaults_and_says_why(camvid, monkeypatch):
    import cgnet.engine.config as config
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "AVX512")
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cpu", "--preset", "camvid-cpu"))
    assert (cfg.channels_last, cfg.compile, cfg.amp) == (True, True, "off")  # the preset's amp
    assert cfg.speed_choice == ("AVX512 CPU: channels_last + compiled model (measured 1.88-2.31x a plain eager loop as "
                                "run on an AVX-512 Xeon); by default here: --channels-last --compile")
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "DEFAULT")
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cpu", "--compile"))
    assert (cfg.channels_last, cfg.compile) == (False, True)  # what the command line says is kept
    assert cfg.speed_choice.endswith("; by default here: --no-channels-last --amp off")
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cpu", "--channels-last", "--no-compile"))
    assert cfg.speed_choice.endswith("; by default here: --amp off")
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cpu", "--channels-last", "--no-compile",
                               "--amp", "off"))
    assert (cfg.channels_last, cfg.compile, cfg.speed_choice) == (True, False, None)


def test_a_cuda_run_keeps_the_cuda_defaults(camvid, monkeypatch):
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # resolving the options needs no GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    cfg = resolve_config(parse("--data-root", str(camvid), "--device", "cuda"))
    assert (cfg.channels_last, cfg.compile, cfg.speed_choice) == (True, False, None)


def test_the_chosen_speed_settings_are_printed_and_saved(camvid, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "DEFAULT")
    argv = [a for a in TINY if a != "--no-compile"]
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *argv, "--max-iters", "1"]) == 0
    why = ("DEFAULT CPU: eager, NCHW (the compiled model was measured only with AVX2 or AVX-512); by default here: "
           "--no-channels-last --no-compile")
    assert f"\nspeed settings: {why}\n" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["speed_choice"], config["channels_last"], config["compile"]) == (why, False, False)

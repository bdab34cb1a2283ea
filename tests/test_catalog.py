"""The datasets table (`catalog.DATASETS`): every entry complete, and the commands, the presets and
the error hints read it rather than lists of their own."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from cgnet.cli import main
from cgnet.data.catalog import DATASETS, Dataset, data_root_candidates, get_entry
from cgnet.engine.config import PRESETS, TrainConfig


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_entry_is_complete(name):
    entry = DATASETS[name]
    assert isinstance(entry, Dataset) and entry.name == name == entry.info.name
    assert entry.title and entry.folder and entry.layout.startswith(f"{entry.folder}/")
    assert callable(entry.write_lists)
    assert (entry.download is not None) != bool(entry.hint), "a download, or the hint when there is none"
    assert (entry.convert is None) == (entry.convert_help == "")
    assert entry.how_to_get() and len(entry.info.palette) == entry.info.num_classes
    known = {f.name for f in fields(TrainConfig)}
    for preset, overrides in entry.presets.items():
        assert set(overrides) <= known, preset
        assert PRESETS[preset] == {"dataset": name, **overrides}
    assert data_root_candidates(name)[-1].parts[-1] == entry.folder


def test_presets_come_from_the_entries_only():
    assert sorted(PRESETS) == sorted(p for entry in DATASETS.values() for p in entry.presets)
    assert PRESETS["camvid"] == dict(dataset="camvid", train_split="trainval", val_split="val", crop=(360, 360),
                                     batch_size=8, epochs=800)
    assert PRESETS["cityscapes"]["crop"] == (680, 680) and PRESETS["cityscapes"]["dataset"] == "cityscapes"


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_data_commands_offer_what_the_table_holds():
    from cgnet.cli import make_parser
    data = _subcommands(_subcommands(make_parser())["data"])
    converters = sorted(f"{n}-trainids" for n, e in DATASETS.items() if e.convert is not None)
    assert converters == ["ade20k-trainids", "cityscapes-trainids"]
    assert set(converters) <= set(data)
    for command in ("lists", "stats", "show"):
        option = next(a for a in data[command]._actions if a.dest == "dataset")
        assert list(option.choices) == list(DATASETS) == ["camvid", "cityscapes", "ade20k"]
    name = next(a for a in data["download"]._actions if a.dest == "name")
    assert list(name.choices) == list(DATASETS)
    assert [n for n, e in DATASETS.items() if e.download is not None] == ["camvid"]


def test_unknown_dataset_and_no_download_are_one_line(capsys):
    with pytest.raises(ValueError) as raised:
        get_entry("mapillary")
    assert str(raised.value) == ("unknown dataset 'mapillary'; known: camvid, cityscapes, ade20k "
                                 "(or give --classes and --ignore-index for a custom one)")
    assert main(["data", "download", "ade20k", "--root", "x"]) == 2
    assert capsys.readouterr().err == (
        "cgnet data: error: ADE20K has no download here: download ADEChallengeData2016.zip from "
        "http://sceneparsing.csail.mit.edu (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip), "
        "unzip it, then cgnet data ade20k-trainids and cgnet data lists\n")

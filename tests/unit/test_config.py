"""hyperpy's own configuration: the commented example in docs/ is the defaults, key for key."""

import tomllib
from pathlib import Path

from hyperpy.config import Config, from_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"
PER_HOST = {("vm", "kernel"), ("vm", "initrd"), ("template", "dir")}  # set by the environment


def test_the_example_names_every_key_with_its_default():
    raw = tomllib.loads(EXAMPLE.read_text())
    loaded = from_dict(raw, str(EXAMPLE)).as_dict()  # no unknown key, no wrong type
    defaults = Config().as_dict()
    assert raw.keys() == defaults.keys()
    for section, values in defaults.items():
        assert raw[section].keys() == values.keys(), section
        for key, value in values.items():
            if (section, key) not in PER_HOST:
                assert loaded[section][key] == value, (section, key)

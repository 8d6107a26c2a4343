"""Key files and the names their keys speak as (protocols/security.py)."""

from __future__ import annotations

import shutil

import pytest

from protocols.security import (
    KeyFileError,
    generate_key_files,
    key_name,
    load_allowed_keys,
    load_key_names,
    load_public_key,
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("keys/pump.key", "pump"),
        ("pump.key_secret", "pump"),
        ("/etc/sdl/drivers/spectrometer.key", "spectrometer"),
        ("xrd", "xrd"),
        ("lab.a:pump-2.key", "lab.a:pump-2"),
    ],
)
def test_a_key_files_name_without_its_suffix_is_the_name_its_key_speaks_as(path, name):
    assert key_name(path) == name


def test_each_allowed_key_is_named_after_its_file_as_keys_generate_writes_them(tmp_path):
    drivers = tmp_path / "drivers"
    for name in ("pump", "spectrometer"):
        generate_key_files(drivers, name)
    generate_key_files(tmp_path / "other", "xrd")
    xrd_secret = tmp_path / "other" / "xrd.key_secret"

    names = load_key_names([drivers, xrd_secret, drivers / "pump.key"])  # pump twice: one name

    assert names == {
        load_public_key(drivers / "pump.key"): "pump",
        load_public_key(drivers / "spectrometer.key"): "spectrometer",
        load_public_key(xrd_secret): "xrd",
    }
    assert set(names) == load_allowed_keys([drivers, xrd_secret])


def test_a_key_under_two_names_or_a_name_no_driver_can_have_is_refused(tmp_path):
    generate_key_files(tmp_path / "keys", "pump")
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(tmp_path / "keys" / "pump.key", twice / "pump.key")
    shutil.copy(tmp_path / "keys" / "pump.key", twice / "spare.key")
    with pytest.raises(KeyFileError, match="allowed as 'pump' too; a key speaks as one name"):
        load_key_names([twice])

    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(tmp_path / "keys" / "pump.key", odd / "pump #1.key")
    with pytest.raises(KeyFileError, match=r"'pump #1' cannot be a driver's name"):
        load_key_names([odd])
    # a monitor only listens: any file name will do
    assert load_allowed_keys([odd]) == {load_public_key(tmp_path / "keys" / "pump.key")}

    for paths, why in (([], "is empty"), ([tmp_path / "none"], "no such file")):
        with pytest.raises(KeyFileError, match=why):
            load_key_names(paths)

from pathlib import Path

from blueplane.machine import machine_id, user_name


def test_machine_id_is_created_once_and_stable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = machine_id(home)
    assert len(first) == 32 and int(first, 16) >= 0
    assert machine_id(home) == first
    assert (home / "machine_id").read_text().strip() == first
    assert not list(home.glob(".machine_id.*"))


def test_machine_ids_differ_between_installs(tmp_path: Path) -> None:
    assert machine_id(tmp_path / "a") != machine_id(tmp_path / "b")


def test_user_name_can_be_hashed() -> None:
    plain = user_name()
    hashed = user_name(hashed=True)
    assert plain and plain != hashed and len(hashed) == 16

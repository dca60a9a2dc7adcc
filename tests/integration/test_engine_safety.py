"""What the engine refuses or keeps at start-up (issue 16): a run dir it does not own, an
epoch that would go backwards; where its spool lives by default."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.config import parse_config
from mmengine.engine import EPOCH_FILE, Engine, EpochError, UnsafeDir, next_epoch
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def config(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """An engine whose venue is a closed port: it starts, and never connects."""
    doc: dict[str, Any] = {
        "engine": {"run_dir": str(run_dir)},
        "venues": [
            {
                "name": "binance",
                "protocol": "binance",
                "url": f"ws://127.0.0.1:{free_port()}/ws",
                "rest_url": f"http://127.0.0.1:{free_port()}",
                "instruments": ["BTC-USDT"],
            }
        ],
        "instruments": [{"name": "BTC-USDT", "sources": [{"venue": "binance"}]}],
    }
    for key, value in sections.items():
        doc.setdefault(key, {}).update(value)
    return doc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_absent_run_dir_is_created_0700(tmp_path: Path) -> None:
    engine = Engine(parse_config(config(tmp_path / "a" / "run")))
    engine.start()
    try:
        assert mode(tmp_path / "a" / "run") == 0o700
    finally:
        assert engine.stop() == 0


def test_a_run_dir_others_can_write_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with pytest.raises(UnsafeDir, match="writable by others"):
        Engine(parse_config(config(shared))).start()
    assert mode(shared) == 0o1777  # never chmod-ed: `run_dir: /tmp` must not strip /tmp
    assert list(shared.iterdir()) == []


def test_a_run_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user (chown)")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeDir, match="owned by uid 65534"):
        Engine(parse_config(config(theirs))).start()


def test_mmengine_run_exits_1_with_the_reason(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(shared)))
    run = subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert f"run dir {shared} is writable by others (mode 0777)" in run.stderr
    assert mode(shared) == 0o777


def test_the_epoch_never_goes_backwards(tmp_path: Path, private_state_dir: Path) -> None:
    # The last run's epoch is ahead of the clock (the clock stepped back since, or the last
    # run was configured high): this run must still sort after it.
    spool = private_state_dir / "mmengine" / "spool"
    spool.mkdir(parents=True, mode=0o700)
    ahead = time.time_ns() + 10**15
    (spool / EPOCH_FILE).write_text(f"{ahead}\n")
    engine = Engine(parse_config(config(tmp_path / "run")))
    engine.start()
    try:
        assert engine.epoch == ahead + 1
    finally:
        assert engine.stop() == 0
    assert int((spool / EPOCH_FILE).read_text()) == ahead + 1
    # A configured epoch not above it is refused, with both numbers in the message.
    stale = Engine(parse_config(config(tmp_path / "run2", engine={"epoch": 5})))
    with pytest.raises(EpochError, match=rf"engine.epoch 5 is not above .* {ahead + 1}"):
        stale.start()
    assert not (tmp_path / "run2" / "engine.lock").exists()  # it let go of the run dir


def test_next_epoch(tmp_path: Path) -> None:
    path = tmp_path / "epoch"
    assert next_epoch(path, None, 100) == 100  # first run: the clock
    assert next_epoch(path, None, 50) == 101  # the clock went back: last + 1
    assert next_epoch(path, None, 500) == 500
    assert next_epoch(path, 900, 0) == 900  # a configured epoch above the last
    with pytest.raises(EpochError):
        next_epoch(path, 900, 0)
    path.write_text("garbage")
    with pytest.raises(EpochError, match="fix it or remove it"):
        next_epoch(path, None, 1)


def test_the_spool_defaults_to_the_users_state_dir(
    tmp_path: Path, private_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(config(tmp_path / "run"))
    assert Path(cfg.limits.spool_dir) == private_state_dir / "mmengine" / "spool"
    assert Engine(cfg).spool_dir("kafka") == private_state_dir / "mmengine" / "spool" / "kafka"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = parse_config(config(tmp_path / "run"))
    assert cfg.limits.spool_dir == str(
        tmp_path / "home" / ".local" / "state" / "mmengine" / "spool"
    )
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mmengine-a")  # systemd StateDirectory=
    assert parse_config(config(tmp_path / "run")).limits.spool_dir == "/var/lib/mmengine-a/spool"


def test_the_fsync_policy_reaches_the_writers(tmp_path: Path) -> None:
    default = Engine(parse_config(config(tmp_path / "run")))
    assert default.fsync_interval_s() == 0.1
    none = Engine(parse_config(config(tmp_path / "run", limits={"fsync": "none"})))
    assert none.fsync_interval_s() is None
    fast = Engine(parse_config(config(tmp_path / "run", limits={"fsync": {"interval_ms": 20}})))
    assert fast.fsync_interval_s() == 0.02

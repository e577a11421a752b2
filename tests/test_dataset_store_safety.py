"""EpisodeStore validation errors and crash safety (a recording process SIGKILLed mid-episode)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from s2robot.datasets.store import DatasetError, EpisodeStore
from test_dataset_core import build_store, make_episode


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "d.zarr"
    build_store(path, lengths=(5, 6, 7))
    return path


def test_missing_episode_ends(store_path):
    shutil.rmtree(store_path / "meta" / "episode_ends")
    with pytest.raises(DatasetError, match="missing meta/episode_ends"):
        EpisodeStore.open(store_path)


def test_unequal_key_lengths(store_path):
    zarr.open_array(store_path / "data" / "proprio", mode="r+").resize((10, 3))
    with pytest.raises(DatasetError, match=r"unequal lengths: data/proprio has 10 steps .* ends at 18"):
        EpisodeStore.open(store_path)


def test_non_increasing_episode_ends(store_path):
    zarr.open_array(store_path / "meta" / "episode_ends", mode="r+")[1] = 5
    with pytest.raises(DatasetError, match=r"not strictly increasing at index 1 \(5 -> 5\)"):
        EpisodeStore.open(store_path)


def test_wrong_dtype_against_spec(store_path):
    g = zarr.open_group(store_path, mode="r+")
    spec = dict(g.attrs["spec"])
    spec["proprio"] = {**spec["proprio"], "dtype": "float64"}
    g.attrs["spec"] = spec
    with pytest.raises(DatasetError, match="data/proprio has dtype float32, spec declares float64"):
        EpisodeStore.open(store_path)


def test_wrong_shape_against_spec(store_path):
    g = zarr.open_group(store_path, mode="r+")
    spec = dict(g.attrs["spec"])
    spec["front_image"] = {**spec["front_image"], "shape": [16, 16, 3]}
    g.attrs["spec"] = spec
    with pytest.raises(DatasetError, match=r"data/front_image has per-step shape \(8, 8, 3\), spec declares \(16, 16, 3\)"):
        EpisodeStore.open(store_path)


def test_missing_and_undeclared_keys(store_path):
    shutil.rmtree(store_path / "data" / "reward")
    with pytest.raises(DatasetError, match="data/reward is declared in attrs\\['spec'\\] but missing"):
        EpisodeStore.open(store_path)


def test_unreadable_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError, match="not a file"):
        EpisodeStore.open(tmp_path / "nope.zip")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(DatasetError, match="not a directory store"):
        EpisodeStore.open(tmp_path / "file.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DatasetError, match="not a zarr v3 dataset store"):
        EpisodeStore.open(tmp_path / "empty.zarr")
    zarr.open_group(tmp_path / "foreign.zarr", mode="w")
    with pytest.raises(DatasetError, match="not an s2robot dataset"):
        EpisodeStore.open(tmp_path / "foreign.zarr")


def test_partial_episode_truncated_with_warning(store_path):
    for key in ("action", "front_image"):  # as if an append died after writing two keys of a 4-step episode
        arr = zarr.open_array(store_path / "data" / key, mode="r+")
        arr.resize((22, *arr.shape[1:]))
    with pytest.warns(UserWarning, match="4 steps past the last recorded episode end"):
        ro = EpisodeStore.open(store_path)
    assert ro.n_episodes == 3 and ro.n_steps == 18
    assert zarr.open_array(store_path / "data" / "action").shape[0] == 22  # read-only: left untouched
    with pytest.warns(UserWarning):
        rw = EpisodeStore.open(store_path, mode="a")
    assert zarr.open_array(store_path / "data" / "action").shape[0] == 18  # truncated
    ep = make_episode(4, 7)
    rw.append_episode(ep)
    np.testing.assert_array_equal(EpisodeStore.open(store_path).get_episode(3)["action"], ep["action"])


def test_interrupted_end_record_is_dropped(store_path):
    ends = zarr.open_array(store_path / "meta" / "episode_ends", mode="r+")
    ends.resize((4,))  # the resize landed, the value did not: fill value -1
    with pytest.warns(UserWarning, match="interrupted episode-end"):
        assert EpisodeStore.open(store_path).n_episodes == 3


RECORDER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import zarr
    sys.path.insert(0, {tests!r})
    from test_dataset_core import make_episode, ATTRS
    from s2robot.datasets.store import EpisodeStore

    store = EpisodeStore.create({path!r}, attrs=ATTRS)
    setitem = zarr.Array.__setitem__
    state = {{"episode": 0, "writes": 0}}

    def slow_setitem(self, key, value):  # announce each data write of the episode to be killed, then stall
        setitem(self, key, value)
        if state["episode"] == {kill_at} and self.path.startswith("data/"):
            state["writes"] += 1
            print("wrote", state["writes"], flush=True)
            time.sleep(0.05)

    zarr.Array.__setitem__ = slow_setitem
    for i in range(100):
        state["episode"] = i
        store.append_episode(make_episode(20 + i, i, hw=32))
        print("done", i, flush=True)
    """
)


def test_sigkill_mid_episode_keeps_finished_episodes(tmp_path):
    path = str(tmp_path / "rec.zarr")
    kill_at = 3
    script = RECORDER.format(tests=os.path.dirname(__file__), path=path, kill_at=kill_at)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    done = []
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if line.startswith("done"):
                done.append(int(line.split()[1]))
            if line.startswith("wrote 3"):  # three of six data arrays of episode 3 written: kill now
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.time() < deadline, "recorder too slow"
    finally:
        proc.kill()
        proc.wait()
    assert done == list(range(kill_at))
    with pytest.warns(UserWarning, match="past the last recorded episode end"):
        store = EpisodeStore.open(path)
    assert store.n_episodes == kill_at
    for i in range(kill_at):
        got, want = store.get_episode(i), make_episode(20 + i, i, hw=32)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    with pytest.warns(UserWarning):  # recording resumes cleanly after the crash
        resumed = EpisodeStore.open(path, mode="a")
    resumed.append_episode(make_episode(9, 42, hw=32))
    np.testing.assert_array_equal(EpisodeStore.open(path).get_episode(kill_at)["proprio"], make_episode(9, 42, hw=32)["proprio"])

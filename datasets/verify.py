"""``s2robot dataset verify STORE``: decode every chunk of every key and feature set and check it.

Per data key: dtype and per-step shape against ``attrs["spec"]``, the array covers every finished episode, every chunk
of a finished episode is stored and decodes to the chunk shape, float keys hold no NaN/inf. Per feature set: every
camera covers every finished step (``progress`` and length), token shape against the set's attrs, float16, every chunk
stored and decodable, finite. A clean run of a local directory store records ``attrs["verified"]`` with a fingerprint
of its files (path, size, mtime of everything but the root ``zarr.json``), so ``dataset info`` can say whether the
store changed since it was last verified.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .integrity import chunk_message, damaged_chunks, episodes_covering, fill_is_legacy_zero, frames_per_chunk, missing_chunks
from .store import DatasetError, EpisodeStore, StoreLike, describe, open_group

BLOCK_BYTES = 64 << 20  # decode this much at a time; a failing block is re-read chunk by chunk to name the chunk
VERIFIED_ATTR = "verified"


@dataclass
class KeyReport:
    """What ``verify`` found for one array (``data/<key>`` or ``features/<hash>/<camera>``)."""

    name: str
    steps: int = 0
    chunks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not errors: e.g. an interrupted episode's steps, dropped on append

    def line(self) -> str:
        state = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return f"  {self.name:<40} {self.steps:>9} steps {self.chunks:>8} chunks  {state}"


def store_fingerprint(path: StoreLike) -> str | None:
    """sha1 of (path, size, mtime) of every file of a local directory store but its root ``zarr.json``; else None."""
    if isinstance(path, zarr.abc.store.Store) or "://" in str(path).removeprefix("file://"):
        return None
    root = Path(str(path).removeprefix("file://")).expanduser()
    if not root.is_dir():
        return None
    h = hashlib.sha1()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = Path(d) / f
            rel = p.relative_to(root).as_posix()
            if rel == "zarr.json":
                continue
            st = p.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def verification_status(path: StoreLike, attrs: dict) -> str:
    """One line for ``dataset info``: verified and unchanged since, or not (with the command to run)."""
    rec = attrs.get(VERIFIED_ATTR) or {}
    fp = store_fingerprint(path)
    if fp is None:
        return (f"verified: not recorded (only local directory stores record it); `s2robot dataset verify {path}` "
                "checks every chunk now")
    if rec and rec.get("fingerprint") == fp:
        return f"verified: yes, at {rec.get('at')}, unchanged since"
    why = "never verified" if not rec else "changed since it was verified"
    return f"verified: no ({why}); run `s2robot dataset verify {path}`"


def _check_chunks(store: EpisodeStore, name: str, n: int, rep: KeyReport) -> None:
    """Stored + decodable + finite over steps [0, n) of ``store.group[name]``, in blocks of whole chunks."""
    arr = store.group[name]
    k, where, ends = frames_per_chunk(arr), describe(store.path), store.episode_ends
    rep.steps, rep.chunks = n, -(-n // k)
    gone = [] if fill_is_legacy_zero(store.attrs, arr) else missing_chunks(arr, n)
    rep.problems += [chunk_message(where, name, c, k, ends, "is missing from storage") for c in gone]
    step_bytes = max(1, arr.nbytes // max(1, arr.shape[0]))
    block = max(k, (BLOCK_BYTES // step_bytes) // k * k)
    floating, bad_steps = np.dtype(arr.dtype).kind == "f", []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        chunks = [c for c in range(lo // k, -(-hi // k)) if c not in gone]
        damaged = damaged_chunks(arr, chunks)
        rep.problems += [chunk_message(where, name, c, k, ends, f"cannot be decoded ({p})") for c, p in damaged.items()]
        chunks = [c for c in chunks if c not in damaged]
        for values, c_lo in _decode(arr, chunks, lo, hi, k, where, name, ends, rep):
            if floating:
                bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
                bad_steps += (np.flatnonzero(bad) + c_lo).tolist()
    if bad_steps:
        t = bad_steps[0]
        rep.problems.append(f"{where}: {name} has {len(bad_steps)} steps with NaN/inf values, the first at step {t} "
                            f"({episodes_covering(ends, t, t + 1)})")


def _decode(arr, chunks, lo, hi, k, where, name, ends, rep):
    """Yield (values, first step) for the decodable parts of [lo, hi); record undecodable chunks in ``rep``."""
    if len(chunks) == -(-hi // k) - lo // k:
        try:
            yield np.asarray(arr[lo:hi]), lo
            return
        except Exception:  # noqa: BLE001 - fall back to chunk by chunk to name the bad one
            pass
    for c in chunks:
        c_lo, c_hi = max(lo, c * k), min(hi, (c + 1) * k)
        try:
            yield np.asarray(arr[c_lo:c_hi]), c_lo
        except Exception as e:  # noqa: BLE001 - codec errors come in many types
            rep.problems.append(chunk_message(where, name, c, k, ends, f"cannot be decoded ({type(e).__name__}: {e})"))


def _check_data_key(store: EpisodeStore, key: str) -> KeyReport:
    rep = KeyReport(f"data/{key}")
    arr, spec = store.array(key), store.spec[key]
    if np.dtype(arr.dtype) != np.dtype(spec["dtype"]) or tuple(arr.shape[1:]) != tuple(spec["shape"]):
        rep.problems.append(f"data/{key} is {arr.dtype} {tuple(arr.shape[1:])} per step, spec declares "
                            f"{spec['dtype']} {tuple(spec['shape'])}")
    if arr.shape[0] > store.n_steps:
        rep.notes.append(f"data/{key} runs {arr.shape[0] - store.n_steps} steps past the last episode end "
                            f"({store.n_steps}): an interrupted episode (opening the store for writing drops it)")
    _check_chunks(store, f"data/{key}", store.n_steps, rep)
    return rep


def _check_feature_set(store: EpisodeStore, key: str) -> list[KeyReport]:
    from .feature_cache import cache_command

    group, n = store.group[f"features/{key}"], store.n_steps
    command = cache_command(describe(store.path), group.attrs.get("encoder_config") or {},
                            group.attrs.get("pool_grid"), group.attrs.get("augment"))
    rerun = f"`{command}`"
    reports = []
    cams = {c for c in store.cameras if f"{c}_image" in store.spec}
    for cam in sorted(cams - {c for c, _ in group.arrays()}):
        reports.append(KeyReport(f"features/{key}/{cam}", problems=[
            f"features/{key} has no tokens for camera {cam!r}; rerun {rerun}"]))
    for cam, arr in sorted(group.arrays()):
        rep = KeyReport(f"features/{key}/{cam}")
        done = int(group.attrs.get("progress", {}).get(cam, 0))
        want = (int(group.attrs.get("num_tokens", -1)), int(group.attrs.get("out_dim", -1)))
        if group.attrs.get("augment"):  # augmented views: (K, N, D) per frame
            want = (int(group.attrs["augment"].get("views", -1)), *want)
        if tuple(arr.shape[1:]) != want or arr.dtype != np.float16:
            rep.problems.append(f"features/{key}/{cam} is {arr.dtype} {tuple(arr.shape[1:])} per frame, its attrs "
                                f"declare float16 {want}")
        if done < n or arr.shape[0] < n:
            rep.problems.append(f"features/{key}/{cam} covers {min(done, arr.shape[0])} of {n} steps (interrupted, "
                                f"or episodes appended after caching); rerun {rerun}")
        _check_chunks(store, f"features/{key}/{cam}", min(done, arr.shape[0], n), rep)
        reports.append(rep)
    return reports


def verify_store(path: StoreLike, record: bool = True) -> list[KeyReport]:
    """Check every key and feature set of the store at ``path``; returns one report per array.

    ``record``: on a clean result, write ``attrs["verified"]`` (local directory stores only). A store that does not
    open (bad metadata, episode bounds, spec) raises :class:`DatasetError`.
    """
    with EpisodeStore.open(path, mode="r") as store:
        reports = [_check_data_key(store, k) for k in store.keys]
        if "features" in store.group:
            for key in sorted(store.group["features"].group_keys()):
                reports += _check_feature_set(store, key)
    if record and not any(r.problems for r in reports):
        fp = store_fingerprint(path)
        if fp is not None:
            group = open_group(path, "r+")
            group.attrs[VERIFIED_ATTR] = {
                "fingerprint": fp, "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            }
    return reports


def verify_main(path: StoreLike) -> int:
    """Print the per-key report of ``verify_store``; 0 when clean, 1 on any problem."""
    try:
        reports = verify_store(path)
    except DatasetError as e:
        print(f"store: {path}\nFAILED: {e}")
        return 1
    print(f"store: {path}")
    for r in reports:
        print(r.line())
    problems = [p for r in reports for p in r.problems]
    for note in (n for r in reports for n in r.notes):
        print(f"note: {note}")
    for p in problems:
        print(f"PROBLEM: {p}")
    if problems:
        print(f"verify: {len(problems)} problem(s) in {sum(bool(r.problems) for r in reports)} of {len(reports)} arrays")
        return 1
    print(f"verify: ok, {len(reports)} arrays checked")
    return 0

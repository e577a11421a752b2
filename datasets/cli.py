"""``s2robot dataset info PATH``, ``verify PATH``, ``import-robomimic IN.hdf5 OUT.zarr``, ``import-lerobot SRC
OUT.zarr`` and ``export-lerobot STORE OUT_DIR``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import zarr

from .store import DatasetError, EpisodeStore, StoreLike, describe


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def size_on_disk(path: StoreLike, group: zarr.Group) -> int:
    """Bytes used by the store: the directory tree or zip file; otherwise the sum of stored array bytes."""
    if not isinstance(path, zarr.abc.store.Store) and "://" not in str(path):
        p = Path(path)
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return sum(a.nbytes_stored() for _, a in group.arrays()) + sum(
        size_on_disk(path, g) for _, g in group.groups()
    )


def summary(path: StoreLike) -> str:
    """Human-readable description of a store: episodes, steps, keys, features, sizes, compression."""
    from .feature_cache import cached_feature_sets

    with EpisodeStore.open(path) as store:
        lengths = store.episode_lengths
        attrs = store.attrs
        lines = [f"store: {path}"]
        if len(lengths):
            lines.append(
                f"episodes: {store.n_episodes}   steps: {store.n_steps}   episode length min/mean/max: "
                f"{lengths.min()}/{lengths.mean():.1f}/{lengths.max()}"
            )
        else:
            lines.append("episodes: 0   steps: 0")
        # collect: how `s2robot collect` made the store (expert, seed, action_noise)
        for k in ("task", "fps", "cameras", "action_space", "collect", "format_version"):
            if k in attrs:
                lines.append(f"{k}: {attrs[k]}")
        lines.append("")
        raw_total = stored_total = 0
        rows = [(f"data/{k}", store.array(k)) for k in store.keys]
        feats = cached_feature_sets(store)
        for key in feats:
            rows += [(f"features/{key}/{c}", a) for c, a in sorted(store.group[f"features/{key}"].arrays())]
        w = max([len(name) for name, _ in rows] + [4]) + 2
        lines.append(f"{'key':<{w}}{'shape':<22}{'dtype':<10}{'chunks':<20}{'raw':>11}{'stored':>11}{'ratio':>8}")
        for name, a in rows:
            raw, stored = a.nbytes, a.nbytes_stored()
            raw_total, stored_total = raw_total + raw, stored_total + stored
            lines.append(
                f"{name:<{w}}{str(tuple(a.shape)):<22}{str(a.dtype):<10}{str(tuple(a.chunks)):<20}"
                f"{_fmt_bytes(raw):>11}{_fmt_bytes(stored):>11}{raw / max(stored, 1):>7.1f}x"
            )
        if feats:
            lines.append("")
            lines.append("cached feature sets:")
            for key, info in feats.items():
                enc = info.get("encoder_config", {})
                done = info.get("progress", {})
                cams = ", ".join(
                    f"{c} {done.get(c, 0)}/{store.n_steps}" for c in info["shapes"]
                )
                aug = info.get("augment")
                views = f" views={aug['views']} (shift {aug['shift']} px, seed {aug['seed']})" if aug else ""
                lines.append(
                    f"  {key}: encoder={enc.get('name')} scales={enc.get('scales')} pool_grid={info.get('pool_grid')}"
                    f" tokens={info.get('num_tokens')}x{info.get('out_dim')}{views}  [{cams}]"
                )
        disk = size_on_disk(path, store.group)
        lines.append("")
        lines += _integrity_lines(path, store, rows)
        lines.append("")
        lines.append(
            f"size on disk: {_fmt_bytes(disk)}   uncompressed: {_fmt_bytes(raw_total)}   "
            f"compression ratio: {raw_total / max(stored_total, 1):.2f}x"
        )
    return "\n".join(lines)


def _integrity_lines(path: StoreLike, store: EpisodeStore, rows: list) -> list[str]:
    """The cheap integrity part of ``info``: chunks missing from storage (a listing), and the verification state."""
    from .integrity import chunk_message, fill_is_legacy_zero, frames_per_chunk, missing_chunks
    from .verify import verification_status

    lines = []
    for name, arr in rows:
        if fill_is_legacy_zero(store.attrs, arr):
            continue
        n = store.n_steps
        if name.startswith("features/"):
            group_path, cam = name.rsplit("/", 1)
            n = min(n, int(store.group[group_path].attrs.get("progress", {}).get(cam, 0)))
        gone = missing_chunks(arr, n)
        if gone:
            first = chunk_message(describe(path), name, gone[0], frames_per_chunk(arr), store.episode_ends, "")
            lines.append(f"PROBLEM: {name}: {len(gone)} chunk(s) of finished episodes missing from storage, the first: "
                         f"{first.split(': ', 1)[1].strip()}")
    lines.append(verification_status(path, store.attrs))
    return lines


def info(argv: list[str]) -> int:
    """``s2robot dataset info PATH``: the summary; exit 1 when chunks of finished episodes are missing."""
    parser = argparse.ArgumentParser(prog="s2robot dataset info", description="Describe a dataset store.")
    parser.add_argument("path", help="zarr directory, .zip file or fsspec URL")
    args = parser.parse_args(argv)
    text = summary(args.path)
    print(text)
    return 1 if "\nPROBLEM: " in text else 0


def verify(argv: list[str]) -> int:
    """``s2robot dataset verify PATH``: decode and check every chunk; per-key report; exit 1 on any problem."""
    from .verify import verify_main

    parser = argparse.ArgumentParser(
        prog="s2robot dataset verify",
        description="Read every chunk of every key and feature set: shapes, dtypes, episode bounds, finiteness of "
                    "float keys, feature sets against their episodes. Exit status 1 on any problem.",
    )
    parser.add_argument("path", help="zarr directory, .zip file or fsspec URL")
    args = parser.parse_args(argv)
    return verify_main(args.path)


def import_robomimic(argv: list[str]) -> int:
    """``s2robot dataset import-robomimic IN.hdf5 OUT.zarr [--proprio-keys a,b] [--overwrite]``."""
    from .robomimic_import import import_robomimic as convert

    parser = argparse.ArgumentParser(
        prog="s2robot dataset import-robomimic", description="Convert a robomimic HDF5 dataset to a zarr store."
    )
    parser.add_argument("src", help="robomimic .hdf5 file")
    parser.add_argument("dst", help="output store (directory, or an fsspec URL)")
    parser.add_argument("--proprio-keys", default=None,
                        help="comma-separated low-dim obs keys concatenated into proprio (default: all, sorted)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    args = parser.parse_args(argv)
    keys = [k for k in args.proprio_keys.split(",") if k] if args.proprio_keys else None
    store = convert(args.src, args.dst, proprio_keys=keys, overwrite=args.overwrite)
    print(f"imported {store.n_episodes} episodes, {store.n_steps} steps -> {os.fspath(args.dst)}")
    print(summary(args.dst))
    return 0


def _pairs(text: str | None, flag: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (``"a="`` maps to ``""``: drop ``a``)."""
    out = {}
    for item in (text or "").split(","):
        if not item:
            continue
        if "=" not in item:
            raise SystemExit(f"s2robot dataset: {flag} entries must be FROM=TO, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _image_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        raise SystemExit(f"s2robot dataset import-lerobot: --image-size must be N or HxW, got {text!r}") from None
    if h < 1 or w < 1 or len(parts) > 2:
        raise SystemExit(f"s2robot dataset import-lerobot: --image-size must be N or HxW, got {text!r}")
    return h, w


def import_lerobot(argv: list[str]) -> int:
    """``s2robot dataset import-lerobot SRC OUT.zarr [--map K=V,...] [--image-size HxW] [--overwrite]``."""
    from .lerobot_import import import_lerobot as convert

    parser = argparse.ArgumentParser(
        prog="s2robot dataset import-lerobot",
        description="Import a local LeRobotDataset root (v3.0 or v2.1) into a zarr store; rerun to resume.",
    )
    parser.add_argument("src", help="LeRobot dataset root (holds meta/info.json)")
    parser.add_argument("dst", help="output store; an existing one from the same import is resumed")
    parser.add_argument("--map", default=None, help="LEROBOT_KEY=STORE_KEY,... extra or renamed keys "
                        "(defaults: observation.images.<cam>=<cam>_image, observation.state=proprio, action=action; "
                        "KEY= drops one)")
    parser.add_argument("--image-size", default=None, help="resize frames to N (square) or HxW")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        store = convert(args.src, args.dst, key_map=_pairs(args.map, "--map"), image_size=_image_size(args.image_size),
                        overwrite=args.overwrite, progress=not args.no_progress)
    except (DatasetError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"s2robot dataset import-lerobot: {e}") from None
    print(f"imported {store.n_episodes} episodes, {store.n_steps} steps -> {os.fspath(args.dst)}")
    return 0


def export_lerobot(argv: list[str]) -> int:
    """``s2robot dataset export-lerobot STORE OUT_DIR [--map K=V,...] [--vcodec C] [--crf N] [--overwrite]``."""
    from .lerobot_export import DEFAULT_VIDEO, export_lerobot as convert

    parser = argparse.ArgumentParser(
        prog="s2robot dataset export-lerobot", description="Write a store as a LeRobot v3.0 dataset root."
    )
    parser.add_argument("store", help="dataset store")
    parser.add_argument("out", help="output LeRobot dataset root (a new directory)")
    parser.add_argument("--map", default=None, help="STORE_KEY=LEROBOT_KEY,... extra or renamed keys (KEY= drops)")
    parser.add_argument("--vcodec", default=DEFAULT_VIDEO["codec"], help="FFmpeg video encoder (libsvtav1, libx264)")
    parser.add_argument("--crf", type=int, default=int(DEFAULT_VIDEO["options"]["crf"]), help="encoder quality")
    parser.add_argument("--robot-type", default=None, help="info.json robot_type")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    options = {**DEFAULT_VIDEO["options"], "crf": str(args.crf)}
    if args.vcodec != "libsvtav1":
        options.pop("preset")
    try:
        out = convert(args.store, args.out, key_map=_pairs(args.map, "--map"),
                      video={"codec": args.vcodec, "options": options}, overwrite=args.overwrite,
                      progress=not args.no_progress, robot_type=args.robot_type)
    except (DatasetError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"s2robot dataset export-lerobot: {e}") from None
    print(f"exported {os.fspath(args.store)} -> LeRobot v3.0 dataset {out}")
    return 0


__all__ = ["info", "verify", "import_robomimic", "import_lerobot", "export_lerobot", "summary", "size_on_disk"]

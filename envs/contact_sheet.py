"""``python -m s2robot.envs.contact_sheet out.png``: every task's cameras at reset and at success, one PNG.

Rows are tasks; columns are ``front``/``wrist`` at reset, then ``front``/``wrist`` at the first successful step
of the scripted expert (seed ``--seed``). Each tile is ``--size`` pixels (default 224, the policy resolution).
"""

from __future__ import annotations

import argparse

import numpy as np


def task_frames(task: str, size: int = 224, seed: int = 0, cameras=("front", "wrist")) -> tuple[list, bool]:
    """[images at reset..., images at success...] (uint8 (size, size, 3) each) and whether the expert succeeded."""
    from s2robot.envs import make_env
    from s2robot.envs.experts import make_expert

    env = make_env(task, image_size=size, cameras=cameras)
    expert = make_expert(task, env, seed=seed)
    obs, info = env.reset(seed=seed)
    first = [obs[f"{c}_image"] for c in cameras]
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(expert.act(obs))
        done = term or trunc
    env.close()
    return first + [obs[f"{c}_image"] for c in cameras], bool(info["success"])


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 7 * len(text) + 6, 14], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(img)


def contact_sheet(out: str, size: int = 224, seed: int = 0, tasks=None) -> str:
    import imageio.v2 as imageio

    from s2robot.envs import TASKS

    tasks = list(tasks or TASKS)
    rows = []
    for task in tasks:
        frames, ok = task_frames(task, size, seed)
        names = ["front@reset", "wrist@reset", "front@success" if ok else "front@end(FAIL)",
                 "wrist@success" if ok else "wrist@end(FAIL)"]
        tiles = [_label(f, f"{task} {n}" if i == 0 else n) for i, (f, n) in enumerate(zip(frames, names))]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    imageio.imwrite(out, np.concatenate(rows, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output PNG path")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="*", default=None)
    args = p.parse_args(argv)
    print(f"wrote {contact_sheet(args.out, args.size, args.seed, args.tasks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: vcf against the older tools on the same job: wall clock, and fp32 features equal to theirs.

Usage:
    python bench/older_tools.py --seed-tool ~/src/video-cnn-feat-pytorch
    python bench/older_tools.py --seed-tool DIR --video-features ~/src/video_features --video-features-python PY

The older tools are not part of vcf: point the options at checkouts of them.

``--seed-tool``: the PyTorch video-cnn-feat (``extract_deep_feat.py`` then ``txt2bin.py``, as its
``do_deep_feat.sh`` runs them) over 720p JPEG frames of real videos, against ``vcf features`` on the same
collection. The seed tool runs with batch size 8 (``--batch-size-seed``) and its two DataLoader workers.

``--video-features``: v-iashin/video_features' ResNet extractor over whole videos (every frame), against
``vcf features --csv`` (every frame, one .npy per video). It loads torchvision's published weights from
``$TORCH_HOME``; the bench plants the same random weights there under the published file name.

Both tools get the same weights file as vcf (random weights of the registry's model: same speed as the
published ones). vcf runs at its default precision (``auto``: bf16 where the CPU has native bf16) for the
timing, and in fp32 for the comparison of the features; every tool runs in a fresh process, alternating, and
the table gives each round. The last line is the headline: the smallest older-tool / vcf wall clock ratio.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

# The seed tool loads models through torch.hub from a local directory holding this hubconf: the registry's own
# architecture, loading the weights file vcf gets.
HUBCONF = """
dependencies = ["torch"]


def {name}(**kwargs):
    import torch

    from vcf.models import get_model

    model = get_model({name!r}).build()
    model.load_state_dict(torch.load({weights!r}, map_location="cpu"))
    return model
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-tool", type=Path, help="checkout of the PyTorch video-cnn-feat")
    parser.add_argument("--video-features", type=Path, help="checkout of v-iashin/video_features")
    parser.add_argument("--video-features-python", default=sys.executable, help="python with its requirements")
    parser.add_argument("--model", default="resnet50", help="a torchvision ResNet in both tools (default resnet50)")
    parser.add_argument("--images", type=int, default=384, help="720p frames for the seed tool (default 384)")
    parser.add_argument("--compare-model", default="resnet18", help="model of the fp32 comparison (default resnet18)")
    parser.add_argument("--compare-images", type=int, default=64, help="frames of the fp32 comparison (default 64)")
    parser.add_argument("--batch-size-seed", type=int, default=8)
    parser.add_argument("--batch-size-vf", type=int, default=1, help="video_features' batch size (its default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, each running every tool once (default 2)")
    return parser.parse_args()


def vcf_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vcf", *args]


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(largest |difference| relative to the largest |value| of theirs, smallest row cosine)."""
    scale = float(np.abs(theirs).max()) or 1.0
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1) + 1e-12)
    return float(np.abs(ours - theirs).max()) / scale, float(cos.min())


class SeedTool:
    """The seed tool over one collection: ``extract_deep_feat.py`` then ``txt2bin.py``, as ``do_deep_feat.sh``."""

    def __init__(self, checkout: Path, root: Path, work: Path, batch_size: int) -> None:
        self.checkout, self.root, self.work, self.batch_size = checkout.resolve(), root, work, batch_size

    def run(self, model: str, weights: Path) -> tuple[float, Path]:
        """Wall seconds of both steps, and the BigFile directory written."""
        hub = self.work / f"hub-{model}"
        hub.mkdir(exist_ok=True)
        (hub / "hubconf.py").write_text(HUBCONF.format(name=model, weights=str(weights)), encoding="utf-8")
        (hub / model).touch()  # the seed tool loads from model_dir only when model_dir/model_name exists
        feat_dir = self.root / "bench" / "FeatureData" / f"{model},avgpool"
        extract = [
            sys.executable, "extract_deep_feat.py", "bench", "--rootpath", str(self.root), "--overwrite", "1",
            "--model_dir", str(hub), "--model_name", model, "--batch_size", str(self.batch_size),
        ]  # fmt: skip
        txt2bin = [sys.executable, "txt2bin.py", "0", str(feat_dir / "id.feature.txt"), "0", str(feat_dir)]
        seconds = common.timed(extract, cwd=self.checkout, env={"HOME": str(self.work)})
        seconds += common.timed([*txt2bin, "--overwrite", "1"], cwd=self.checkout)
        return seconds, feat_dir


def vcf_features(collection: Path, model: str, weights: Path, *extra: str) -> tuple[float, Path]:
    """Wall seconds of ``vcf features`` (a fresh process), and the BigFile directory written."""
    argv = vcf_command(
        "features", str(collection), "--model", model, "--weights", str(weights), "--overwrite", "--quiet", *extra
    )
    return common.timed(argv), collection / "FeatureData" / f"{model},avgpool"


def compare(ours_dir: Path, theirs_dir: Path) -> tuple[float, float]:
    """:func:`agreement` of two BigFile directories over the same ids."""
    from vcf.io.bigfile import BigFile

    ours, theirs = BigFile(ours_dir), BigFile(theirs_dir)
    if sorted(ours.names) != sorted(theirs.names):
        raise RuntimeError("the two tools wrote different frame ids")
    return agreement(ours.read_array(theirs.names), theirs.read_array(theirs.names))


def seed_rounds(args: argparse.Namespace, work: Path, weights: Path) -> list[list[object]]:
    """Seed tool vs vcf over the same 720p JPEGs; a table row per tool and round, then the fp32 comparison."""
    frames = common.write_frame_set(work / "frames", args.images, common.SIZE_720P)
    roots = {tool: work / f"root-{tool}" for tool in ("seed", "vcf")}
    for root in roots.values():
        common.make_image_collection(root / "bench", frames)
    seed = SeedTool(args.seed_tool, roots["seed"], work, args.batch_size_seed)
    ours = roots["vcf"] / "bench"
    rows: list[list[object]] = []
    images = len(frames)
    for round_no in range(1, args.repeat + 1):
        seconds, _ = seed.run(args.model, weights)
        vcf_default, _ = vcf_features(ours, args.model, weights)
        rows.append([f"seed tool {args.model} fp32 b{args.batch_size_seed}, round {round_no}", images, seconds])
        rows.append([f"vcf features {args.model} (auto precision), round {round_no}", images, vcf_default])
    # The equality check uses a model whose published preprocessing is the seed tool's fixed one (shorter
    # side 256, centre 224, bilinear): resnet50's current weights are evaluated at 232, which vcf follows.
    for root in roots.values():
        common.make_image_collection(root / "bench", frames[: args.compare_images])
    compare_weights = common.random_weights(args.compare_model, work / f"{args.compare_model}-random.pth")
    _, theirs = seed.run(args.compare_model, compare_weights)
    for label, extra in (("", ()), (" --resize-backend pil", ("--resize-backend", "pil"))):
        _, mine = vcf_features(ours, args.compare_model, compare_weights, "--precision", "fp32", *extra)
        relative, cosine = compare(mine, theirs)
        rows.append(
            [f"  {args.compare_model} vcf fp32{label} vs seed: max |diff| / max |value| {relative:.1e}, "
             f"min cosine {cosine:.7f}", args.compare_images]
        )  # fmt: skip
    return rows


class VideoFeatures:
    """video_features' frame-wise ResNet extractor: every frame, .npy outputs, published weights from $TORCH_HOME."""

    def __init__(self, checkout: Path, python: str, work: Path, batch_size: int) -> None:
        self.checkout, self.python, self.work, self.batch_size = checkout.resolve(), python, work, batch_size
        self.torch_home = work / "torch_home"

    def run(self, model: str, weights: Path, videos: list[Path]) -> tuple[float, dict[str, Path]]:
        """Wall seconds, and the features file written per video stem."""
        import torchvision

        published = torchvision.models.get_model_weights(model).IMAGENET1K_V1  # what the tool asks torchvision for
        planted = self.torch_home / "hub" / "checkpoints" / Path(published.url).name
        planted.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, planted)
        out = self.work / f"vf-out-{model}"
        shutil.rmtree(out, ignore_errors=True)  # the tool skips videos whose outputs exist
        listing = self.work / "videos.txt"
        listing.write_text("".join(f"{v}\n" for v in videos), encoding="utf-8")
        argv = [
            self.python, "-m", "video_features", "feature_type=resnet", f"model_name={model}", "device=cpu",
            f"batch_size={self.batch_size}", f"file_with_video_paths={listing}", "on_extraction=save_numpy",
            f"output_path={out}", f"tmp_path={self.work / 'vf-tmp'}",
        ]  # fmt: skip
        seconds = common.timed(argv, cwd=self.checkout.parent, env={"TORCH_HOME": str(self.torch_home)})
        written = {v.stem: out / "resnet" / model / f"{v.stem}_resnet.npy" for v in videos}
        missing = [str(p) for p in written.values() if not p.is_file()]
        if missing:  # it reports a failed video and exits 0
            raise RuntimeError(f"video_features wrote no {', '.join(missing)}")
        return seconds, written


def vcf_csv(work: Path, model: str, weights: Path, videos: list[Path], *extra: str) -> tuple[float, dict[str, Path]]:
    """Wall seconds of ``vcf features --csv`` over every frame of ``videos``, and the .npy written per stem."""
    out = work / f"vcf-out-{model}"
    table_path = work / f"videos-{model}.csv"
    with table_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_path", "feature_path"])
        writer.writerows([str(v), str(out / f"{v.stem}.npy")] for v in videos)
    argv = vcf_command(
        "features", "--csv", str(table_path), "--model", model, "--weights", str(weights), "--every", "1",
        "--overwrite", "--quiet", *extra,
    )  # fmt: skip
    return common.timed(argv), {v.stem: out / f"{v.stem}.npy" for v in videos}


def compare_npy(ours: dict[str, Path], theirs: dict[str, Path]) -> tuple[float, float]:
    """The worst :func:`agreement` over the videos."""
    worst = (0.0, 1.0)
    for stem, path in theirs.items():
        mine, other = np.load(ours[stem]).astype(np.float32), np.load(path).astype(np.float32)
        if mine.shape != other.shape:
            raise RuntimeError(f"{stem}: vcf wrote {mine.shape}, video_features {other.shape}")
        relative, cosine = agreement(mine, other)
        worst = (max(worst[0], relative), min(worst[1], cosine))
    return worst


def video_rounds(args: argparse.Namespace, work: Path, weights: Path) -> list[list[object]]:
    """video_features vs ``vcf features --csv`` over the real videos, every frame; then the fp32 comparison."""
    videos = common.real_videos()
    tool = VideoFeatures(args.video_features, args.video_features_python, work, args.batch_size_vf)
    rows: list[list[object]] = []
    for round_no in range(1, args.repeat + 1):
        seconds, theirs = tool.run(args.model, weights, videos)
        vcf_default, _ = vcf_csv(work, args.model, weights, videos)
        frames = sum(np.load(path, mmap_mode="r").shape[0] for path in theirs.values())  # one row a frame
        rows.append([f"video_features {args.model} fp32 b{args.batch_size_vf}, round {round_no}", frames, seconds])
        rows.append([f"vcf features --csv {args.model} (auto precision), round {round_no}", frames, vcf_default])
    compare_weights = common.random_weights(args.compare_model, work / f"{args.compare_model}-random.pth")
    first = videos[:1]
    _, theirs = tool.run(args.compare_model, compare_weights, first)
    for label, extra in (("", ()), (" --resize-backend pil", ("--resize-backend", "pil"))):
        _, mine = vcf_csv(work, args.compare_model, compare_weights, first, "--precision", "fp32", *extra)
        relative, cosine = compare_npy(mine, theirs)
        rows.append(
            [f"  {args.compare_model} vcf fp32{label} vs video_features ({first[0].name}): max |diff| / max |value| "
             f"{relative:.1e}, min cosine {cosine:.7f}"]
        )  # fmt: skip
    return rows


def ratios(rows: list[list[object]], older: str) -> list[float]:
    """Per round: older tool's seconds / vcf's default-precision seconds."""
    theirs = [r[2] for r in rows if str(r[0]).startswith(older)]
    ours = [r[2] for r in rows if "(auto precision)" in str(r[0])]
    return [t / o for t, o in zip(theirs, ours, strict=True)]


def render(rows: list[list[object]], unit: str) -> str:
    """The table: a rate column for timed rows (name, count, seconds); comparison rows as they are."""
    cells = [[*r, r[1] / r[2]] if len(r) == 3 else [*r, *[""] * (4 - len(r))] for r in rows]
    return common.table(["run", unit, "seconds", f"{unit}/s"], cells)


def main() -> None:
    args = parse_args()
    # (option naming the older tool's checkout, its rounds, what the rows count) by the tool's row label.
    tools = {
        "seed tool": ("seed_tool", seed_rounds, "images"),
        "video_features": ("video_features", video_rounds, "frames"),
    }
    chosen = {label: tool for label, tool in tools.items() if getattr(args, tool[0]) is not None}
    if not chosen:
        raise SystemExit("give --seed-tool DIR and/or --video-features DIR (checkouts of the older tools)")
    print(common.machine())
    headline = []
    with common.temp_dir("vcf-bench-older-") as work:
        weights = common.random_weights(args.model, work / f"{args.model}-random.pth")
        for label, (_, rounds, unit) in chosen.items():
            rows = rounds(args, work, weights)
            print(render(rows, unit))
            found = ratios(rows, label)
            print(f"{label} / vcf wall clock per round: " + ", ".join(f"{r:.2f}x" for r in found))
            headline += found
    print(common.headline("older tool / vcf wall clock, worst", min(headline)))


if __name__ == "__main__":
    main()

"""Benchmark: vcf's own start-up cost, a 1-frame ``vcf features`` run against ``python -c "import torch"``.

Usage:
    python bench/startup.py
    python bench/startup.py --model efficientnet_lite0 --repeat 5

Each command runs ``--repeat`` times in a fresh process (median wall time). The 1-frame run reads one 720p
JPEG; models without local weights run from a random-weights file given with --weights, whose sha256 the
first (uncounted) run memoizes, as a real run finds it memoized after its first use. The headline is the
1-frame run minus ``import torch``; ``import torch, torchvision`` is shown too because torchvision (the
preprocessing's resize kernels and the torchvision and timm models) itself imports torch._dynamo, which
vcf keeps out of its own import of torchvision (shown as well).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

PYTHON = sys.executable
# torchvision imported as vcf imports it: without torch._dynamo (vcf.io.torchvision_import).
VCF_TORCHVISION = "from vcf.io.torchvision_import import import_torchvision; import_torchvision()"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="registry name (default resnet50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command; the median counts (default 3)")
    return parser.parse_args()


def wall(argv: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``argv`` in fresh processes.

    Raises:
        SystemExit: The command failed.
    """
    return statistics.median(common.timed(argv, env=env) for _ in range(repeat))


def one_frame_collection(work: Path) -> Path:
    """A collection of one 720p JPEG frame of a real video."""
    frames = common.write_frame_set(work / "frames", 1, common.SIZE_720P)
    return common.make_image_collection(work / "coll", frames)


def weights_args(model: str, work: Path, env: dict[str, str]) -> list[str]:
    """``--weights FILE`` with random weights when the model's own are not available here, else nothing."""
    probe = (
        "import sys; from vcf.models import get_model, weights_status; "
        f"s = weights_status(get_model({model!r})); "
        "sys.exit(0 if s.startswith(('builtin', 'packaged (/', 'cached')) else 1)"
    )
    if subprocess.run([PYTHON, "-c", probe], env=env).returncode == 0:
        return []
    path = work / "random.pth"
    save = (
        "import torch; from vcf.models import get_model; "
        f"torch.save(get_model({model!r}).build().state_dict(), {str(path)!r})"
    )
    subprocess.run([PYTHON, "-c", save], env=env, check=True)
    return ["--weights", str(path)]


def main() -> None:
    args = parse_args()
    print(f"machine: {common.machine()}")
    with common.temp_dir("vcf-bench-startup-") as work:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # The weights' hash memo lives in the weights cache: a private one keeps the bench's file out of the real one.
        if not Path(os.environ.get("TORCH_HOME", "~/.cache/torch")).expanduser().joinpath("hub").is_dir():
            env["TORCH_HOME"] = str(work / "torch-home")
        collection = one_frame_collection(work)
        extra = weights_args(args.model, work, env)
        vcf = [PYTHON, "-m", "vcf"]
        features = [*vcf, "features", str(collection), "--model", args.model, "--device", "cpu", "--overwrite", "-q"]
        features += extra
        subprocess.run(features, env=env, check=True, capture_output=True)  # memoizes the weights' hash
        commands = {
            'python -c "import torch"': [PYTHON, "-c", "import torch"],
            'python -c "import torch, torchvision"': [PYTHON, "-c", "import torch, torchvision"],
            "torch and torchvision as vcf imports them": [PYTHON, "-c", VCF_TORCHVISION],
            "vcf --help": [*vcf, "--help"],
            "vcf models": [*vcf, "models"],
            f"vcf features, 1 frame, {args.model}": features,
        }
        with common.BackgroundLoad() as load:
            seconds = {label: wall(argv, env, args.repeat) for label, argv in commands.items()}
    base = seconds['python -c "import torch"']
    rows = [[label, s, s - base] for label, s in seconds.items()]
    print(f"median of {args.repeat} fresh processes each; other load {load.cores:.2f} cores")
    print(common.table(["command", "wall s", "minus import torch, s"], rows))
    one_frame = seconds[f"vcf features, 1 frame, {args.model}"]
    tv = seconds['python -c "import torch, torchvision"'] - base
    vcf_tv = seconds["torch and torchvision as vcf imports them"] - base
    print(f"importing torchvision on top of torch: {tv:.2f} s (it imports torch._dynamo)")
    print(f"importing torchvision on top of torch as vcf does (without torch._dynamo): {vcf_tv:.2f} s")
    print(f"vcf's own start-up beyond import torch and torchvision: {one_frame - base - vcf_tv:.2f} s")
    print(common.headline(f"startup {args.model}: 1-frame run minus import torch, s", one_frame - base))


if __name__ == "__main__":
    main()

"""README.md is true: its Python blocks and its cheap shell blocks (those on configs/tiny.py or the shipped
configs/nano.py) run as written, from a fresh folder holding the repository's example/, configs/,
tools/ and pretrained/, and its option
list is the one the parsers define."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
# The one change made to a README command: the smoke training runs 2 of its 10 steps here (each step
# is the same work; the README's 10 are timed in its text).
CHEAPER = {"--max-steps 10": "--max-steps 2"}


CHEAP_CONFIGS = ("configs/tiny.py", "configs/nano.py")  # toy size, and the small shipped demo model


def runs_on_tiny(code: str) -> bool:
    """A shell block CI runs: every cascadev command in it uses configs/tiny.py or configs/nano.py."""
    commands = [line for line in code.splitlines() if re.match(r"\s*cascadev \w", line)]
    return bool(commands) and all(any(c in line for c in CHEAP_CONFIGS) for line in commands)


PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
SHELL_BLOCKS = [code for lang, code in BLOCKS if lang == "bash" and runs_on_tiny(code)]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A folder like a fresh clone's root (without its outputs), so relative paths work as written."""
    folder = tmp_path_factory.mktemp("clone")
    for name in ("example", "configs", "tools", "pretrained"):
        (folder / name).symlink_to(ROOT / name)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    return folder, env


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(PYTHON_BLOCKS) == 2 and "LatentStore" in PYTHON_BLOCKS[0] and "random_init=True" in PYTHON_BLOCKS[1]
    runnable = "\n".join(SHELL_BLOCKS)
    for command in ("cascadev recon", "cascadev upscale", "cascadev train", "tools/compare_frames.py"):
        assert command in runnable, command


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs(fresh, index):
    folder, env = fresh
    result = subprocess.run(
        [sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    made = "outputs/store/index.jsonl" if "LatentStore" in PYTHON_BLOCKS[index] else "outputs/api.mp4"  # what it writes
    assert (folder / made).is_file()


@pytest.mark.parametrize("index", range(len(SHELL_BLOCKS)))
def test_shell_block_on_tiny_runs(fresh, index):
    folder, env = fresh
    code = SHELL_BLOCKS[index]
    for old, new in CHEAPER.items():
        code = code.replace(old, new)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wrote = [line for line in result.stdout.splitlines() if line.startswith("cascadev: wrote ")]
    assert len(wrote) == len([line for line in code.splitlines() if re.match(r"\s*cascadev \w", line)])
    for line in wrote:  # what each command says it wrote is there
        assert (folder / line.split()[2]).exists(), line


def test_readme_option_list_is_the_parsers():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import readme_options
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert readme_options.readme_block(README) == readme_options.options_markdown()
    assert "`cascadev train CONFIG --work-dir WORK_DIR`" in README  # the train options, not the model ones

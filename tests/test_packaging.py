"""A plain (non-editable) wheel install runs the main job from any directory."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_install_runs_the_default_train_from_outside_the_repo(tmp_path):
    # Build the wheel offline with this environment's setuptools (no download at test time).
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, ROOT],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("jaxembed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "jaxembed/config.py" in names and not any(n.startswith(("configs/", "tests/")) for n in names)

    # A fresh venv holding only the wheel; the dependencies come from this
    # environment's site-packages, appended after the venv's own (a plain path
    # in a .pth file: the editable install's finder there is never activated).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], check=True, capture_output=True
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    (pathlib.Path(site) / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAXEMBED_CORPUS")}
    env["JAXEMBED_CACHE"] = str(tmp_path / "cache")
    where = subprocess.run(
        [python, "-c", "import jaxembed; print(jaxembed.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    # No --config: the tiny config shipped inside the package, on its offline corpus.
    proc = subprocess.run(
        [
            venv / "bin" / "jaxembed",
            "train",
            "--workdir",
            "run",
            "--no-progress",
            "--config.train.steps=5",
            "--config.train.checkpoint_every=5",
            "--config.train.eval_every=5",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (outside / "run" / "report.md").is_file()
    config = json.loads((outside / "run" / "config.json").read_text())
    assert config["model"]["features"] == 32 and config["data"]["corpus"] == "python-docs"  # tiny's values
    rows = [json.loads(line) for line in (outside / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 5

    # A named config resolves from the package too; a wrong name is one clear line.
    bad = subprocess.run(
        [venv / "bin" / "jaxembed", "train", "--workdir", "x", "--config", "gpt3_large"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "jaxembed train: error: --config gpt3_large: no such config file, and not one of the named configs "
        "(tiny, default, gpt2_small)."
    ]
    assert not (outside / "x").exists()

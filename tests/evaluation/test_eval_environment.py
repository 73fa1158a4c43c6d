"""The environment an evaluation meets: HOME unset works (the FID cache falls back inside the project); a
read-only run or samples folder, or a cache path under a file or read-only, is one line before anything is
generated. (Tests run as root, for whom os.access grants everything: read-only folders are simulated.)"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddim.evaluation import evaluate


@pytest.fixture
def no_home(monkeypatch, tmp_path) -> Path:
    """HOME, DDIM_CACHE and XDG_CACHE_HOME unset; the project root is tmp_path/project. Returns the cache
    the configs must fall back to."""
    for name in ("HOME", "DDIM_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path / "project"))
    return tmp_path / "project" / "outputs" / ".cache" / "ddim"


@pytest.fixture
def read_only(monkeypatch, tmp_path) -> Path:
    """A folder this process may not write: os.access denies writing for it and below."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).absolute().is_relative_to(folder):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return folder


def _nothing_generated(folder: Path) -> bool:
    return not list(folder.rglob("*.png")) and not list(folder.rglob("metrics.json"))


def test_home_unset_resolves_every_config(no_home, compose_config):
    for name in ("train", "eval"):
        extra = ["ckpt=x"] if name == "eval" else []
        cfg = compose_config([*extra, f"paths.output_dir={no_home.parent}/run"], config_name=name)
        assert cfg.paths.cache_dir == f"{no_home.parents[2]}/outputs/.cache/ddim"
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # as loggers do
        assert resolved["paths"]["cache_dir"] == str(no_home)


def test_evaluation_with_home_unset_runs_and_caches_inside_the_project(
    no_home, tiny_ckpt, tmp_path, eval_cfg, eval_overrides, tiny_extractor_override
):
    out = tmp_path / "run"
    overrides = [o for o in eval_overrides(tiny_ckpt, out) if not o.startswith("fid.cache_dir")]
    evaluate(eval_cfg([*overrides, tiny_extractor_override, "n_samples=4", "shard_size=4"]))
    assert (out / "metrics.json").is_file()
    assert list((no_home / "reference").glob("*/stats*"))


def test_read_only_run_folder_is_one_line_before_hydra_writes(read_only, tiny_ckpt, tmp_path, hydra_main):
    run = read_only / "run"
    code, output = hydra_main("eval.py", [f"ckpt={tiny_ckpt}", "logger=none", f"hydra.run.dir={run}"])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"{read_only} is read-only for this user" in lines[0] and "hydra.run.dir" in lines[0]
    assert list(read_only.iterdir()) == []


def test_read_only_samples_folder_is_one_line(
    read_only, tiny_ckpt, tmp_path, eval_cfg, eval_overrides, exits_with_one_line
):
    out = tmp_path / "run"
    cfg = eval_cfg([*eval_overrides(tiny_ckpt, out), f"samples_dir={read_only / 'samples'}"])
    line = exits_with_one_line(evaluate, cfg)
    assert line.startswith(f"samples_dir={read_only / 'samples'} cannot be written")
    assert _nothing_generated(tmp_path) and list(read_only.iterdir()) == []


def test_cache_dir_under_a_file_is_one_line(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, exits_with_one_line
):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "run"
    overrides = [*eval_overrides(tiny_ckpt, out, cache=tmp_path / "a_file" / "cache"), "fid=detector"]
    line = exits_with_one_line(evaluate, eval_cfg(overrides))
    assert f"lies under {tmp_path / 'a_file'}, which is a file" in line and "DDIM_CACHE" in line
    assert _nothing_generated(tmp_path)


def test_a_read_only_cache_that_must_grow_is_one_line(
    tiny_ckpt, tmp_path, monkeypatch, eval_cfg, eval_overrides, tiny_extractor_override, exits_with_one_line
):
    cache = tmp_path / "shared-cache"
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # what a read-only file system answers
        if self.absolute().is_relative_to(cache):
            raise PermissionError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    out = tmp_path / "run"
    line = exits_with_one_line(
        evaluate, eval_cfg([*eval_overrides(tiny_ckpt, out, cache=cache), tiny_extractor_override])
    )
    assert f"The FID cache paths.cache_dir={cache} cannot be written (Read-only file system" in line
    assert _nothing_generated(tmp_path)

"""Exact resume and checkpoint files: a killed run resumed ends bitwise equal to the unkilled one; saves are
atomic whatever TMPDIR is; a damaged last.ckpt falls back to an intact step checkpoint; a checkpoint carrying
pickled code is refused without running it."""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ddim.checkpoints.lightning_io import AtomicCheckpointIO, remove_interrupted_saves, resolve_resume_path
from ddim.data.resumable import ResumableLoader
from ddim.errors import user_error_in
from ddim.io import TEMP_SUFFIX
from ddim.training.random_streams import RandomStreams
from ddim.training.train import train

ROOT = Path(__file__).resolve().parents[2]
# 40 images in batches of 8: 5 steps per epoch, so 9 steps cross two epoch boundaries; dropout and flips on,
# so every random stream (t, noise, dropout, order, flips) matters; checkpoints every 3 steps.
RUN = [
    "experiment=quickstart",
    "logger=none",
    "data.batch_size=8",
    "data.limit=40",
    "data.flip=true",
    "model.net.dropout=0.1",
    "trainer.max_steps=9",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.sample_grid.every_n_steps=5",
    "callbacks.sample_grid.n_samples=2",
    "callbacks.sample_grid.sampler.steps=2",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The run never killed, once for this module (one thread, as the tests' runs and subprocesses use)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=RUN)
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return _final(run_dir)


def _final(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]["state"]}


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for index, state in a["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"][index][key]), (index, key)


@pytest.mark.parametrize("kill_at", [5, 8])  # mid-epoch 1 (resume from step 3), mid-epoch 2 (from step 6)
def test_killed_run_resumed_with_ckpt_path_last_is_bitwise_equal(
    tmp_path, train_cfg, monkeypatch, uninterrupted, kill_at
):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # probes.KillAtStep as a Hydra _target_

    killed = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=probes.KillAtStep", f"+callbacks.kill.step={kill_at}"]
    with pytest.raises(Exception, match="killed before step"):
        train(train_cfg([*RUN, *kill], killed))
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 * (kill_at // 3)
    # Lightning restores the loader's place in the epoch (it warns when a loader cannot do that).
    assert (
        saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == saved["global_step"] % 5
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(train_cfg([*RUN, "ckpt_path=last"], killed))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert metrics["global_step"] == 9 and metrics["resumed_from"].endswith("last.ckpt")

    _assert_bitwise_equal(_final(killed), uninterrupted)


def test_loader_restored_mid_epoch_gives_the_rest_of_that_epoch():
    items = [torch.tensor([[[float(i), -float(i)]]]) for i in range(20)]  # a flip swaps the two values

    def loader() -> ResumableLoader:
        made = ResumableLoader(items, batch_size=4, seed=7, flip=True)
        made.sampler.set_epoch(3)
        return made

    whole = list(loader())
    first = loader()
    taken = [batch for _, batch in zip(range(2), first, strict=False)]
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 2}
    restored = loader()
    restored.load_state_dict(state)
    rest = list(restored)
    for got, want in zip([*taken, *rest], whole, strict=True):
        assert torch.equal(got, want)
    order = torch.cat(whole)[:, 0, 0, 0].abs()
    flipped = torch.cat(whole)[:, 0, 0, 0] < 0
    assert sorted(order.tolist()) == list(range(20)) and order.tolist() != list(range(20))  # shuffled
    assert 0 < int(flipped.sum()) < 19  # item 0 reads the same either way
    # Iterating again reads a whole epoch: the restored position applied once.
    assert len(list(restored)) == 5


@pytest.mark.slow
def test_resume_with_the_readme_command_after_kill_9(tmp_path, uninterrupted, hydra_main):
    """The README's command in a real process, killed with SIGKILL soon after its first checkpoint."""
    run_dir = tmp_path / "run"
    args = [sys.executable, str(ROOT / "src" / "train.py"), *RUN, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The README's resume command, run in-process through src/train.py (its own __main__).
    code, output = hydra_main("train.py", [*RUN, f"hydra.run.dir={run_dir}", "ckpt_path=last"])
    assert code == 0, output[-2000:]
    _assert_bitwise_equal(_final(run_dir), uninterrupted)


def test_a_save_killed_mid_write_leaves_last_ckpt_intact_even_with_tmpdir_elsewhere(tmp_path):
    folder = tmp_path / "checkpoints"
    target = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    # A second save killed (SIGKILL) half-way through writing its bytes, with TMPDIR on another file system:
    # in a forked copy of this process (no new interpreter to start), which kills itself mid-write.
    tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)

    def killed_mid_write(obj, f):
        f.write(b"PK\x03\x04" + bytes(100_000))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child never returns to pytest: it is killed, or exits on any surprise
        try:
            os.environ["TMPDIR"] = tmpdir
            tempfile.tempdir = None  # tempfile caches TMPDIR at first use
            torch.save = killed_mid_write
            AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    old = torch.load(target, weights_only=True)
    assert old["global_step"] == 1 and torch.equal(old["w"], torch.ones(3))
    left = list(folder.glob(f"*{TEMP_SUFFIX}"))
    assert len(left) == 1 and left[0].stat().st_size > 100_000
    # The next training start removes what the killed save left, and nothing else.
    remove_interrupted_saves(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_damaged_last_ckpt_falls_back_to_the_newest_intact_step_checkpoint(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        AtomicCheckpointIO().save_checkpoint({"global_step": step}, folder / f"step_{step:07d}.ckpt")
    AtomicCheckpointIO().save_checkpoint({"global_step": 6}, folder / "last.ckpt")
    # The newest step file is damaged too: one flipped byte in its pickle, which its CRC no longer matches.
    damaged = folder / "step_0000006.ckpt"
    with zipfile.ZipFile(damaged) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    data = bytearray(damaged.read_bytes())
    header = member.header_offset  # local header: 30 bytes, then the name and extra field, then the data
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start + 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated

    with caplog.at_level(logging.WARNING):
        chosen = resolve_resume_path("last", tmp_path)
    assert Path(chosen).name == "step_0000004.ckpt"
    assert "last.ckpt is damaged" in caplog.text and "step_0000004.ckpt" in caplog.text
    # Pointing at the broken file directly names the intact ones instead.
    with pytest.raises(Exception, match="intact checkpoints beside it: step_0000004.ckpt, step_0000002.ckpt"):
        resolve_resume_path(str(last), tmp_path)


class _Payload:
    """Unpickling this creates a file: the stand-in for code a hostile checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_with_a_pickle_payload(tmp_path, train_cfg):
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "hostile.ckpt"
    torch.save({"global_step": 3, "state_dict": {}, "extra": _Payload(marker)}, ckpt)
    assert torch.load(ckpt, weights_only=False) and marker.exists()  # the payload works when unpickled
    marker.unlink()

    with pytest.raises(Exception) as info:
        train(train_cfg([*RUN, f"ckpt_path={ckpt}"], tmp_path / "run"))
    user_error = user_error_in(info.value)
    assert user_error is not None and "can run code" in str(user_error) and str(ckpt) in str(user_error)
    assert not marker.exists()


def _streams(seed: int, rank: int, world_size: int):
    streams = RandomStreams(seed)
    trainer = SimpleNamespace(
        global_rank=rank, world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    streams.setup(trainer, None, "fit")
    return streams


def _draw(streams) -> torch.Tensor:
    """What a training step would draw first: the stream is swapped in around the step."""
    streams.on_train_batch_start(None, None, None, 0)
    drawn = torch.randn(4)
    streams.on_train_batch_end(None, None, None, None, 0)
    return drawn


def test_streams_differ_per_rank_repeat_per_seed_and_reseed_when_the_world_size_changes(caplog):
    outside = torch.get_rng_state()
    rank0, rank1, rank0_again = _draw(_streams(0, 0, 2)), _draw(_streams(0, 1, 2)), _draw(_streams(0, 0, 2))
    assert torch.equal(rank0, rank0_again) and not torch.equal(rank0, rank1)
    assert not torch.equal(rank0, _draw(_streams(1, 0, 2)))  # seed 1 rank 0 is not seed 0 rank 1 either
    assert not torch.equal(rank1, _draw(_streams(1, 0, 2)))

    saved = _streams(0, 0, 2)
    state = {"seed": 0, "ranks": [saved.state_dict()["ranks"][0]] * 2}
    resumed = _streams(0, 0, 1)  # one process resumes what two wrote
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert "written by 2 processes and this run has 1" in caplog.text
    assert not torch.equal(_draw(resumed), rank0)  # fresh noise, not a replay of what was drawn
    torch.set_rng_state(outside)

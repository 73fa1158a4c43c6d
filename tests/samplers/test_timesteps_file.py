"""sampler.timesteps_file: a searched sequence is used as it is by the sampler it was made for, and refused
with one line for another sampler, update setting, schedule or NFE."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.samplers import make_sampler
from ddim.samplers.timesteps_file import schedule_sha256, write_timesteps_file

SCHED = Schedule.from_config(num_timesteps=100, beta_end=0.2)
SEQ = [3, 20, 61, 99]


@pytest.fixture
def unipc_file(tmp_path):
    """A timesteps file as task=optimize_timesteps writes it, for UniPC-2 at 4 NFE on SCHED."""
    settings = make_sampler("unipc", steps=4).settings()
    path = tmp_path / "timesteps.json"
    write_timesteps_file(
        path,
        {
            "sampler": {"name": "unipc", "label": "unipc2_logsnr", "settings": settings},
            "nfe": 4,
            "timesteps": SEQ,
            "schedule": {"num_timesteps": 100, "betas_sha256": schedule_sha256(SCHED)},
            "checkpoint": {"path": "model.ckpt", "sha256": "0" * 64},
        },
    )
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, DDIMError) and "\n" not in message
    return message


def test_the_file_gives_the_sequence_label_and_tag(unipc_file):
    sampler = make_sampler("unipc", timesteps_file=str(unipc_file)).check_schedule(SCHED)
    assert sampler.sequence(SCHED) == SEQ and sampler.nfe(SCHED) == 4
    assert sampler.label() == "unipc2_optimized" and sampler.tag() == "unipc2_S4_optimized"
    assert sampler.settings()["timesteps_file"] == str(unipc_file)
    # the file replaces steps and skip_type, as sampler.timesteps does
    again = dataclasses.replace(sampler, steps=7, skip_type="uniform").check_schedule(SCHED)
    assert again.sequence(SCHED) == SEQ and again.label() == "unipc2_optimized"


@pytest.mark.parametrize(
    ("name", "settings", "match"),
    [
        ("dpm_solver_pp", {}, "searched for sampler=unipc, not sampler=dpm_solver_pp"),
        ("unipc", {"order": 3}, r"searched for sampler=unipc \(order=2 there, 3 here\)"),
        ("unipc", {"final_step": "none"}, "final_step='denoise' there, 'none' here"),
        ("unipc", {"timesteps": [0, 50]}, "sampler.timesteps and sampler.timesteps_file both"),
    ],
)
def test_a_file_for_another_sampler_is_refused_when_the_sampler_is_built(unipc_file, name, settings, match):
    with pytest.raises(DDIMError, match=match) as err:
        make_sampler(name, timesteps_file=str(unipc_file), **settings)
    one_line(err)


def test_a_file_for_another_schedule_or_nfe_is_refused_against_the_schedule(unipc_file):
    sampler = make_sampler("unipc", timesteps_file=str(unipc_file))
    for other in (Schedule.from_config(num_timesteps=100), Schedule.from_config()):
        with pytest.raises(DDIMError, match="searched for another noise schedule") as err:
            sampler.check_schedule(other)
        one_line(err)
    edited = json.loads(unipc_file.read_text())
    edited["nfe"] = 5
    unipc_file.write_text(json.dumps(edited))
    with pytest.raises(DDIMError, match="records NFE 5, but its 4 timesteps make 4") as err:
        make_sampler("unipc", timesteps_file=str(unipc_file)).check_schedule(SCHED)
    one_line(err)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist; make one with"),
        ("{not json", "is not a readable JSON file"),
        ('{"format": "other"}', "is not a timesteps file of task=optimize_timesteps"),
        ('{"format": "ddim-timesteps/1", "timesteps": [1, 2]}', "lacks or garbles the field"),
    ],
)
def test_a_missing_or_damaged_file_is_refused_with_one_line(tmp_path, content, match):
    path = tmp_path / "timesteps.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DDIMError, match=match) as err:
        make_sampler("ddim", timesteps_file=str(path))
    one_line(err)


def test_a_file_with_a_disordered_sequence_is_refused(unipc_file):
    edited = json.loads(unipc_file.read_text())
    edited["timesteps"] = [20, 3, 61, 99]
    unipc_file.write_text(json.dumps(edited))
    with pytest.raises(DDIMError, match="distinct, increasing") as err:
        make_sampler("unipc", timesteps_file=str(unipc_file))
    one_line(err)

"""A run folder's checkpoint is the latest one Ray Train recorded as complete, never a newer folder
whose upload a kill interrupted (``ray_jobs.task.find_checkpoint_file``). The record is written with
the installed Ray's own snapshot model; tests/ray_jobs/test_finetune.py checks a real fit's folder."""

from __future__ import annotations

import logging

import pytest
import torch
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                            _TrainingResultState)

from ray_jobs.runtime import CHECKPOINT_FILE, SNAPSHOT_FILE, load_checkpoint_state
from ray_jobs.task import find_checkpoint_file

DONE = "checkpoint_2026-01-01_00-00-01.000000"
OLDER = "checkpoint_2026-01-01_00-00-00.500000"
PARTIAL = "checkpoint_2026-01-01_00-00-09.000000"


def _record(run, names: list[str]) -> None:
    results = [_TrainingResultState(checkpoint_dir_name=n, metrics={"step": i}) for i, n in enumerate(names)]
    snap = _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=list(range(len(names))),
        latest_checkpoint_result=results[-1] if results else None, pending_training_results=[],
        pending_validation_specs=[], current_report_index=len(names), validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[])
    (run / SNAPSHOT_FILE).write_text(snap.model_dump_json() if hasattr(snap, "model_dump_json") else snap.json())


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "ft-run"
    for name, step in ((OLDER, 1), (DONE, 2), (PARTIAL, 3)):
        (run / name).mkdir(parents=True)
        torch.save({"step": step, "model": {"net": {"w": torch.zeros(4096)}}}, run / name / CHECKPOINT_FILE)
    blob = (run / PARTIAL / CHECKPOINT_FILE).read_bytes()
    (run / PARTIAL / CHECKPOINT_FILE).write_bytes(blob[: len(blob) // 3])  # a kill mid-upload
    return run


def test_recorded_checkpoint_wins_over_a_newer_half_written_folder(run_dir, caplog):
    _record(run_dir, [OLDER, DONE])
    with caplog.at_level(logging.WARNING):
        path = find_checkpoint_file(str(run_dir))
    assert path == str(run_dir / DONE / CHECKPOINT_FILE)
    assert load_checkpoint_state(path)["step"] == 2
    assert not caplog.records
    # explicit checkpoint folders and files are taken as given
    assert find_checkpoint_file(str(run_dir / OLDER)) == str(run_dir / OLDER / CHECKPOINT_FILE)


def test_recorded_checkpoint_without_its_file_falls_back_to_an_earlier_recorded_one(run_dir):
    _record(run_dir, [OLDER, DONE])
    (run_dir / DONE / CHECKPOINT_FILE).unlink()
    assert find_checkpoint_file(str(run_dir)) == str(run_dir / OLDER / CHECKPOINT_FILE)
    (run_dir / OLDER / CHECKPOINT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="recorded as complete"):
        find_checkpoint_file(str(run_dir))


def test_run_folder_without_record_takes_the_newest_folder_with_a_warning(run_dir, caplog):
    with caplog.at_level(logging.WARNING):
        assert find_checkpoint_file(str(run_dir)) == str(run_dir / PARTIAL / CHECKPOINT_FILE)
    assert any("no record of completed checkpoints" in r.getMessage() for r in caplog.records)

"""TensorBoard event files of the training stages, read back with TensorBoard's own reader."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.storage.contract import TENSORBOARD_DIR
from pipeline.training.tensorboard_log import ScalarLog, publish_event_files


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (orphaned steps of a killed run purged)."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_scalars_are_logged_by_step_and_non_numbers_skipped(tmp_path):
    with ScalarLog(tmp_path) as scalars:
        for step in (1, 2, 4):
            scalars.log({"loss": 1.0 / step, "note": "text", "ptx_loss": None, "flag": True}, step, prefix="train/")
    assert read_scalars(tmp_path / TENSORBOARD_DIR) == {"train/loss": [(1, 1.0), (2, 0.5), (4, 0.25)]}


def test_resumed_run_continues_the_same_curve(tmp_path):
    """A run killed after step 5 resumes from its checkpoint of step 3: steps 4 and 5 are trained again,
    and TensorBoard shows one curve 1..8, the resumed run's values from step 4 on."""
    with ScalarLog(tmp_path) as killed:
        for step in range(1, 6):
            killed.log({"loss": float(step)}, step)
    with ScalarLog(tmp_path, resume_step=3) as resumed:
        for step in range(4, 9):
            resumed.log({"loss": 10.0 * step}, step)
    assert len(list((tmp_path / TENSORBOARD_DIR).iterdir())) == 2  # one log dir, one file per run
    assert read_scalars(tmp_path / TENSORBOARD_DIR)["loss"] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0),
    ]


def test_event_files_are_copied_into_the_artifact(tmp_path):
    scratch, artifact = tmp_path / "checkpoints", tmp_path / "staging"
    artifact.mkdir()
    with ScalarLog(scratch) as scalars:
        scalars.log({"loss": 1.0}, 1)
    assert publish_event_files(scratch, artifact) == artifact / TENSORBOARD_DIR
    assert read_scalars(artifact / TENSORBOARD_DIR) == {"loss": [(1, 1.0)]}
    assert publish_event_files(artifact, artifact) == artifact / TENSORBOARD_DIR  # written in place: nothing to copy
    assert publish_event_files(tmp_path / "nothing", artifact) is None

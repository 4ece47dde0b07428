"""Determinism: the same seed and inputs give byte-identical data artifacts (the same content hashes),
in separate instances and artifacts roots; a different seed gives different data. (Model artifacts
are not byte-identical across runs: their model cards name the run that made them.)"""

import json

import dagster as dg
import pytest

from assets.data import eval_prompts, ppo_prompts, preference_data, sft_data
from pipeline.storage.contract import DATA_FILE
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource

DATA_ASSETS = [sft_data, preference_data, ppo_prompts, eval_prompts]


def _materialize_data(tmp_path, name: str, ops_config: dict) -> dict[str, str]:
    """Content hash of each data asset after materializing them into a fresh instance and root."""
    home = tmp_path / name / "dagster_home"
    home.mkdir(parents=True)
    resources = {"artifacts": ArtifactStoreResource(root=str(tmp_path / name / "artifacts")), "io_manager": ArtifactIOManager()}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(DATA_ASSETS, instance=instance, resources=resources, run_config={"ops": ops_config})
        assert result.success
        hashes = {}
        for asset in DATA_ASSETS:
            metadata = instance.get_latest_materialization_event(asset.key).asset_materialization.metadata
            hashes[asset.key.to_user_string()] = (metadata["content_hash"].value, metadata["artifact_path"].value)
        return hashes


def _generator_config(seed: int) -> dict:
    return {asset.key.to_user_string(): {"config": {"n_records": 24, "seed": seed}} for asset in DATA_ASSETS}


def test_same_seed_gives_byte_identical_data_artifacts(tmp_path):
    first = _materialize_data(tmp_path, "first", _generator_config(seed=7))
    second = _materialize_data(tmp_path, "second", _generator_config(seed=7))
    for asset in first:
        (hash_1, path_1), (hash_2, path_2) = first[asset], second[asset]
        assert path_1 != path_2
        assert hash_1 == hash_2, f"{asset}: same seed, different content"
        assert (tmp_path / path_1 / DATA_FILE).read_bytes() == (tmp_path / path_2 / DATA_FILE).read_bytes()


def test_a_different_seed_gives_different_data():
    from pipeline.data import generator as data_generator

    assert data_generator.sft_records(24, 7) == data_generator.sft_records(24, 7)
    assert data_generator.sft_records(24, 7) != data_generator.sft_records(24, 8)
    assert data_generator.preference_records(24, 7) != data_generator.preference_records(24, 8)


@pytest.mark.parametrize("suffix", [".parquet"])
def test_same_user_file_gives_byte_identical_data_artifact(tmp_path, suffix):
    records = [{"prompt": f"Explain idea {i}.", "completion": f"Idea {i} is ünïcode-safe."} for i in range(5)]
    source = tmp_path / f"user{suffix}"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), source)
    config = {"sft_data": {"config": {"source": str(source)}}}
    hashes = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        resources = {"artifacts": ArtifactStoreResource(root=str(home / "artifacts")), "io_manager": ArtifactIOManager()}
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            assert dg.materialize([sft_data], instance=instance, resources=resources, run_config={"ops": config}).success
            hashes.append(instance.get_latest_materialization_event(sft_data.key).asset_materialization.metadata["content_hash"].value)
    assert hashes[0] == hashes[1]

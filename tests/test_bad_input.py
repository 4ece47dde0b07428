"""The bad-input matrix: every case fails with an error naming the file, the line or row and the field,
and leaves every artifact and the Dagster instance as they were.

Each file case is tried twice: on the library (`load_user_records`) and through `dg.materialize` of
the data asset with `source` set. README.md has the same cases as a table.
"""

import gzip
import inspect
import json
import re
import typing
from pathlib import Path

import annotated_types
import dagster as dg
import pydantic
import pytest

from assets.data import preference_data, sft_data
from pipeline.data.records import MAX_LINE_BYTES, DataError, load_user_records
from pipeline.definitions import defs
from pipeline.orchestration.resources import ArtifactIOManager, ArtifactStoreResource


def _jsonl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


GOOD_SFT = {"prompt": "What is a policy?", "completion": "A mapping from states to actions."}
GOOD_PAIR = {"prompt": "What is a policy?", "chosen": "A mapping from states to actions.", "rejected": "No idea."}

# (case id, data kind, file name, file bytes or a builder, pattern the message must match).
# The pattern always names the file and, where the problem sits in one row, the row and the field.
FILE_CASES = [
    ("malformed_json", "sft", "bad.jsonl", _jsonl(GOOD_SFT, b'{"prompt": "x", "completion": '),
     r"bad\.jsonl, row 2 \(line 2\): malformed JSON"),
    ("missing_field", "sft", "bad.jsonl", _jsonl(GOOD_SFT, {"prompt": "only a prompt"}),
     r"bad\.jsonl, row 2 \(line 2\), field 'completion': missing"),
    ("wrong_type", "sft", "bad.jsonl", _jsonl({"prompt": 42, "completion": "x"}),
     r"bad\.jsonl, row 1 \(line 1\), field 'prompt': expected a string, got int"),
    ("empty_prompt", "sft", "bad.jsonl", _jsonl(GOOD_SFT, GOOD_SFT, {"prompt": "  ", "completion": "x"}),
     r"bad\.jsonl, row 3 \(line 3\), field 'prompt': empty string"),
    ("empty_answer", "sft", "bad.jsonl", _jsonl({"prompt": "p", "completion": ""}),
     r"bad\.jsonl, row 1 \(line 1\), field 'completion': empty string"),
    ("chosen_equals_rejected", "preference", "bad.jsonl",
     _jsonl(GOOD_PAIR, {"prompt": "p", "chosen": "same answer", "rejected": "same answer "}),
     r"bad\.jsonl, row 2 \(line 2\), field 'rejected': chosen and rejected .*identical"),
    ("not_utf8", "sft", "bad.jsonl", _jsonl(GOOD_SFT, b'{"prompt": "caf\xe9", "completion": "x"}'),
     r"bad\.jsonl, row 2 \(line 2\): bytes that are not UTF-8"),
    ("ten_mb_line", "sft", "bad.jsonl",
     lambda: _jsonl(GOOD_SFT, {"prompt": "x" * (10 << 20), "completion": "y"}),
     rf"bad\.jsonl, row 2 \(line 2\): line is longer than the {MAX_LINE_BYTES} bytes"),
    ("blank_line_between_records", "sft", "bad.jsonl", _jsonl(GOOD_SFT) + b"\n" + _jsonl(GOOD_SFT),
     r"bad\.jsonl, row 2 \(line 2\): blank line"),
    ("top_level_not_object", "sft", "bad.jsonl", _jsonl(["prompt", "completion"]),
     r"bad\.jsonl, row 1 \(line 1\): expected a( JSON)? object, got list"),
    ("empty_file", "sft", "bad.jsonl", b"",
     r"bad\.jsonl: contains no records"),
    ("missing_file", "sft", "does_not_exist.jsonl", None,
     r"does_not_exist\.jsonl: file does not exist"),
    ("directory_not_file", "sft", "a_directory.jsonl", "directory",
     r"a_directory\.jsonl: is a directory"),
    ("parquet_wrong_type", "preference", "bad.parquet", "parquet",
     r"bad\.parquet, row 1, field 'chosen': expected a string, got int"),
    # Compressed JSONL: the same rows and messages as the plain file.
    ("gz_missing_field", "sft", "bad.jsonl.gz", gzip.compress(_jsonl(GOOD_SFT, {"prompt": "only a prompt"})),
     r"bad\.jsonl\.gz, row 2 \(line 2\), field 'completion': missing"),
    ("gz_unterminated_string", "sft", "bad.json.gz", gzip.compress(_jsonl(GOOD_SFT, b'{"prompt": "x')),
     r"bad\.json\.gz, row 2 \(line 2\): malformed JSON \(Unterminated string starting at column 12\)"),
    ("gz_not_gzip", "sft", "bad.jsonl.gz", _jsonl(GOOD_SFT),
     r"bad\.jsonl\.gz: not a readable gzip file"),
    ("gz_cut_off", "sft", "bad.jsonl.gz", lambda: _cut_in_half(gzip.compress(_jsonl(*[GOOD_SFT] * 3000))),
     r"bad\.jsonl\.gz: the gzip data is cut off or corrupt after line \d+"),
    ("unsupported_type", "sft", "train.gz", gzip.compress(_jsonl(GOOD_SFT)),
     r"train\.gz: unsupported file type '\.gz'; use \.jsonl, \.json, \.jsonl\.gz, \.json\.gz, \.parquet, \.csv or \.csv\.gz"),
]


def _make_source(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if content == "directory":
        path.mkdir()
    elif content == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # A Parquet column has one type, so a wrong type shows from the first row on.
        pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": [1, 2], "rejected": ["y", "z"]}), path)
    elif content is not None:
        path.write_bytes(content() if callable(content) else content)
    return path


@pytest.mark.parametrize("case,kind,name,content,pattern", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_library_names_file_row_and_field(tmp_path, case, kind, name, content, pattern):
    source = _make_source(tmp_path, name, content)
    with pytest.raises(DataError, match=pattern):
        load_user_records(source, kind)


# ---------------------------------------------------------------- through Dagster

ASSET_KEYS = ("base_model", "sft_data", "preference_data")


@pytest.fixture(scope="module")
def pipeline_state(tmp_path_factory):
    """An instance and artifacts root holding one good materialization of the inputs of SFT."""
    home = tmp_path_factory.mktemp("dagster_home")
    root = tmp_path_factory.mktemp("artifacts")
    resources = {"artifacts": ArtifactStoreResource(root=str(root)), "io_manager": ArtifactIOManager()}
    tiny_base = {"pretrain_steps": 0, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                 "intermediate_size": 64, "pretrain_documents": 100, "vocab_size": 400}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            list(defs.assets), selection=[dg.AssetKey(k) for k in ASSET_KEYS], instance=instance, resources=resources,
            run_config={"ops": {"base_model": {"config": tiny_base}, "sft_data": {"config": {"n_records": 16}},
                                "preference_data": {"config": {"n_records": 16}}}},
        )
        assert result.success
        yield instance, root, resources


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _materialization_counts(instance) -> dict[str, int]:
    keys = [key for asset in defs.assets for key in asset.keys]
    return {key.to_user_string(): len(instance.fetch_materializations(key, limit=1000).records) for key in keys}


def _failure_text(result) -> str:
    failures = result.get_step_failure_events()
    assert failures, "the run was expected to fail in a step"
    return "\n".join(f.step_failure_data.error.to_string() for f in failures)


def _materialize_expecting_failure(pipeline_state, asset_name: str, config: dict) -> str:
    """Run one asset that must fail; assert nothing changed on disk or in the instance; return the error."""
    instance, root, resources = pipeline_state
    before_files, before_counts = _snapshot(root), _materialization_counts(instance)
    result = dg.materialize(
        list(defs.assets), selection=[dg.AssetKey(asset_name)], instance=instance, resources=resources,
        run_config={"ops": {asset_name: {"config": config}}}, raise_on_error=False,
    )
    assert not result.success
    assert _snapshot(root) == before_files, "a failed run must leave the artifacts root untouched"
    assert _materialization_counts(instance) == before_counts, "a failed run must record no materialization"
    return _failure_text(result)


@pytest.mark.parametrize("case,kind,name,content,pattern", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_data_asset_rejects_bad_file_and_changes_nothing(pipeline_state, tmp_path, case, kind, name, content, pattern):
    source = _make_source(tmp_path, name, content)
    asset_name = {"sft": "sft_data", "preference": "preference_data"}[kind]
    error = _materialize_expecting_failure(pipeline_state, asset_name, {"source": str(source)})
    assert re.search(pattern, error), f"{case}: error does not name file/row/field as expected:\n{error[:2000]}"


@pytest.mark.parametrize("asset_name,config,field", [
    ("sft_data", {"n_records": 0}, "n_records"),
    ("sft_checkpoint", {"learning_rate": 0.0}, "learning_rate"),
    ("sft_checkpoint", {"learning_rate": -1e-4}, "learning_rate"),
    ("sft_checkpoint", {"batch_size": 0}, "batch_size"),
])
def test_zero_or_negative_size_or_learning_rate_is_rejected(pipeline_state, asset_name, config, field):
    error = _materialize_expecting_failure(pipeline_state, asset_name, config)
    assert re.search(rf"{field}\s+Input should be greater than 0", error), error[-1500:]


def test_unknown_config_key_is_rejected_before_anything_runs(pipeline_state):
    instance, root, resources = pipeline_state
    before_files, before_counts = _snapshot(root), _materialization_counts(instance)
    with pytest.raises(dg.DagsterInvalidConfigError) as raised:
        dg.materialize(
            list(defs.assets), selection=[dg.AssetKey("sft_checkpoint")], instance=instance, resources=resources,
            run_config={"ops": {"sft_checkpoint": {"config": {"learning_rat": 1e-3}}}},
        )
    assert re.search(r'unexpected config entry "learning_rat" at path root:ops:sft_checkpoint:config', str(raised.value))
    assert _snapshot(root) == before_files and _materialization_counts(instance) == before_counts


def test_library_settings_reject_unknown_keys_and_non_positive_values():
    from pipeline.settings import SftSettings

    with pytest.raises(pydantic.ValidationError, match="learning_rat\n  Extra inputs are not permitted"):
        SftSettings(learning_rat=1e-3)
    with pytest.raises(pydantic.ValidationError, match="learning_rate\n  Input should be greater than 0"):
        SftSettings(learning_rate=0)


# Config fields that are sizes, counts or learning rates: zero or less is never meaningful.
SIZE_OR_RATE = re.compile(
    r"(learning_rate|^lr$|_lr$|size|length|steps|epochs|batch|tokens|^n_|^num_|records|samples|bins|layers|heads|documents|every)"
)
# Where zero is a documented switch: no pretraining of the local base model; no PPO checkpoints; no PPO eval.
ZERO_ALLOWED = {"pretrain_steps", "checkpoint_every", "n_eval_prompts"}


def _asset_config_classes():
    for asset in defs.assets:
        function = asset.op.compute_fn.decorated_fn
        for parameter in inspect.signature(function).parameters.values():
            annotation = parameter.annotation
            if isinstance(annotation, type) and issubclass(annotation, dg.Config):
                yield asset.key.to_user_string(), annotation


def _is_number(annotation) -> bool:
    options = typing.get_args(annotation) or (annotation,)
    return any(option in (int, float) for option in options)


def test_every_size_and_learning_rate_field_must_be_positive():
    offenders, checked = [], 0
    for asset_name, config_class in _asset_config_classes():
        for name, field in config_class.model_fields.items():
            if not (_is_number(field.annotation) and SIZE_OR_RATE.search(name)) or "fraction" in name or "ratio" in name:
                continue
            checked += 1
            bounds = [m for m in field.metadata if isinstance(m, (annotated_types.Gt, annotated_types.Ge))]
            positive = any(
                (isinstance(b, annotated_types.Gt) and b.gt >= 0) or (isinstance(b, annotated_types.Ge) and b.ge > 0)
                for b in bounds
            )
            if not positive and not (name in ZERO_ALLOWED and bounds):
                offenders.append(f"{asset_name}: {config_class.__name__}.{name}")
    assert checked >= 20, "the scan found too few fields; has the config layout changed?"
    assert not offenders, "size/count/learning-rate fields without a gt=0 constraint: " + ", ".join(offenders)

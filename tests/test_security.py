"""Untrusted inputs: no remote code or pickle weights unless configured, no path outside the artifacts
root, a web UI on localhost only, and no secret in artifacts, metadata or logs."""

import ast
import os
import re
from pathlib import Path

import dagster as dg
import pytest
import torch

from pipeline.storage.artifacts import ArtifactStore
from pipeline.orchestration.outputs import redact_metadata
from pipeline.storage.safety import REDACTED, UnsafePathError, confined_path, redact_secrets, redact_text

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("pipeline", "assets", "quality_gates")
FAKE_HF_TOKEN = "hf_" + "Zq3" * 11  # shaped like a real token, valid nowhere


def _source_files():
    for directory in SOURCE_DIRS:
        yield from sorted((REPO_ROOT / directory).rglob("*.py"))


def _from_pretrained_calls():
    """(file, line, receiver name, keyword dict) of every `X.from_pretrained(...)` in the project's code."""
    for path in _source_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                receiver = ast.unparse(node.func.value)
                yield path.relative_to(REPO_ROOT), node.lineno, receiver, {k.arg: k.value for k in node.keywords if k.arg}


def test_every_model_load_is_safetensors_only_unless_pickle_is_allowed():
    model_loads = [c for c in _from_pretrained_calls() if "Tokenizer" not in c[2] and "Config" not in c[2]]
    assert len(model_loads) >= 4, "expected the pipeline's model loads to be found"
    missing = [f"{file}:{line} {receiver}" for file, line, receiver, keywords in model_loads if "use_safetensors" not in keywords]
    assert not missing, "from_pretrained without use_safetensors (pickle weights would load): " + ", ".join(missing)
    for file, line, receiver, keywords in model_loads:
        value = keywords["use_safetensors"]
        # Either a literal True, or derived from the `allow_pickle` setting.
        assert (isinstance(value, ast.Constant) and value.value is True) or "allow_pickle" in ast.unparse(value), \
            f"{file}:{line}: use_safetensors={ast.unparse(value)}"


def test_remote_code_never_enabled_by_a_literal():
    for file, line, receiver, keywords in _from_pretrained_calls():
        value = keywords.get("trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{file}:{line} trusts remote code"
    from assets.base import BaseModelConfig

    defaults = BaseModelConfig()
    assert defaults.trust_remote_code is False and defaults.allow_pickle is False


def _tiny_pickle_only_checkpoint(directory: Path) -> Path:
    from pipeline.settings import TinyModelSpec
    from pipeline.training.base_model import build_tiny_llama, train_tokenizer
    from pipeline.data.generator import pretraining_text

    tokenizer = train_tokenizer(pretraining_text(30, 0), vocab_size=400)
    model = build_tiny_llama(tokenizer, TinyModelSpec(vocab_size=400, hidden_size=16, num_layers=1, num_heads=2,
                                                      intermediate_size=32), seed=0)
    directory.mkdir()
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")  # the pickle format
    return directory


def test_pickle_weights_are_refused_unless_allow_pickle(tmp_path):
    from pipeline.training.base_model import load_pretrained

    checkpoint = _tiny_pickle_only_checkpoint(tmp_path / "pickled")
    with pytest.raises(OSError, match=r"safetensors"):
        load_pretrained(str(checkpoint))
    model, _, _ = load_pretrained(str(checkpoint), allow_pickle=True)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "/abs", ".hidden", "with\0nul", "", "a\\b", "x/../../y"])
def test_asset_names_cannot_leave_the_artifacts_root(tmp_path, name):
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(UnsafePathError):
        store.asset_dir(name)
    with pytest.raises(UnsafePathError):
        with store.stage(name):
            pass
    assert list(tmp_path.iterdir()) == [], "nothing is created for a refused name"


def test_paths_through_symlinks_or_dotdot_are_refused(tmp_path):
    root = tmp_path / "artifacts"
    outside = tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "linked_asset").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="escapes"):
        ArtifactStore(root).asset_dir("linked_asset")
    for parts in (("..", "outside"), ("a", "..", "..", "outside"), (str(outside),)):
        with pytest.raises(UnsafePathError):
            confined_path(root, *parts)
    assert confined_path(root, "sft_checkpoint", ".checkpoints") == root.resolve() / "sft_checkpoint" / ".checkpoints"


def test_a_prefixed_asset_key_cannot_write_outside_its_directory(tmp_path, dagster_instance):
    """Asset keys with a prefix render as `a/b`: not one directory name, so refused, and nothing written."""
    from pipeline.orchestration.outputs import artifact_output
    from pipeline.orchestration.resources import ArtifactStoreResource

    @dg.asset(key=dg.AssetKey(["team", "escaped"]), code_version="1")
    def prefixed(context, artifacts: ArtifactStoreResource):
        with artifacts.store().stage(context.asset_key.to_user_string()) as staged:
            (staged.path / "x.txt").write_text("x")
        return artifact_output(context, staged.path, {})

    result = dg.materialize([prefixed], instance=dagster_instance, raise_on_error=False,
                            resources={"artifacts": ArtifactStoreResource(root=str(tmp_path / "artifacts"))})
    assert not result.success
    assert "invalid asset name for an artifact directory: 'team/escaped'" in result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert not list(tmp_path.rglob("x.txt"))


def test_web_ui_binds_to_localhost_by_default():
    makefile = (REPO_ROOT / "Makefile").read_text()
    ui_recipe = re.search(r"^ui:.*?\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert ui_recipe, "Makefile has no ui target"
    assert re.search(r"dagster(-webserver| dev)\b.*--host 127\.0\.0\.1", ui_recipe.group(1))
    for path in [REPO_ROOT / "Makefile", REPO_ROOT / "workspace.yaml", *_source_files()]:
        assert "0.0.0.0" not in path.read_text(), f"{path} binds to every interface"


def test_redaction_masks_env_secrets_tokens_and_url_credentials(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("MY_SERVICE_API_KEY", "s3cr3t-value-123")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to mask safely
    text = (f"token {FAKE_HF_TOKEN}, key s3cr3t-value-123, url https://user:pa55@example.com/x, "
            "other hf_abcdefghijklmnopqrstuvwxyz012345, abc")
    redacted = redact_text(text, None)
    assert FAKE_HF_TOKEN not in redacted and "s3cr3t-value-123" not in redacted and "pa55" not in redacted
    assert "hf_abcdefghijklmnopqrstuvwxyz012345" not in redacted
    assert redacted.endswith(", abc") and f"https://{REDACTED}@example.com/x" in redacted
    nested = redact_secrets({"config": {"source": f"hub:x?token={FAKE_HF_TOKEN}", "n": 3}, "list": [FAKE_HF_TOKEN]})
    assert nested == {"config": {"source": f"hub:x?token={REDACTED}", "n": 3}, "list": [REDACTED]}
    metadata = redact_metadata({
        "md": dg.MetadataValue.md(f"| {FAKE_HF_TOKEN} |"), "json": dg.MetadataValue.json({"t": FAKE_HF_TOKEN}),
        "text": FAKE_HF_TOKEN, "number": 3,
    })
    assert FAKE_HF_TOKEN not in repr(metadata) and metadata["number"] == 3


def test_materialization_metadata_is_redacted(tmp_path, dagster_instance, monkeypatch):
    """A secret that reaches an asset's config or metadata is masked before Dagster stores it."""
    from pipeline.orchestration.outputs import artifact_output
    from pipeline.orchestration.resources import ArtifactStoreResource

    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)

    class LeakyConfig(dg.Config):
        note: str

    @dg.asset(code_version="1")
    def leaky(context, config: LeakyConfig, artifacts: ArtifactStoreResource):
        with artifacts.store().stage("leaky") as staged:
            (staged.path / "out.txt").write_text("fine\n")
        return artifact_output(context, staged.path, {"note": config.note, "env": dict(os.environ)})

    result = dg.materialize(
        [leaky], instance=dagster_instance, resources={"artifacts": ArtifactStoreResource(root=str(tmp_path / "a"))},
        run_config={"ops": {"leaky": {"config": {"note": f"pulled with {FAKE_HF_TOKEN}"}}}},
    )
    assert result.success
    metadata = dagster_instance.get_latest_materialization_event(dg.AssetKey("leaky")).asset_materialization.metadata
    assert FAKE_HF_TOKEN not in repr(metadata)
    assert REDACTED in metadata["note"].value

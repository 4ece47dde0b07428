"""Versioned artifact directories: content-addressed names, and the hash computed once per commit."""

from pipeline.storage import artifacts
from pipeline.storage.artifacts import ArtifactStore, committed_content_hash, content_hash


def test_a_committed_artifact_is_named_by_its_hash_and_not_hashed_twice(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    with store.stage("sft_data") as staged:
        (staged.path / "data.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    final = staged.path
    expected = content_hash(final)
    assert final.parent == tmp_path / "sft_data" and final.name.endswith(expected[:12])

    calls = []
    monkeypatch.setattr(artifacts, "content_hash", lambda path: calls.append(path) or expected)
    assert committed_content_hash(final) == expected and calls == [], "the commit's hash is reused"
    # Only once: any later caller hashes the directory as it is on disk now.
    assert committed_content_hash(final) == expected and calls == [final]

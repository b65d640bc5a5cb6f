from pathlib import Path

import pytest

from forkcast.model.lineage import data_hash, git_commit, stage_hashes

from ..conftest import run_ok


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in {"code.py": "x = 1\n", "dvc.lock": "stages: {}\n", "outputs/metrics.json": "{}\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    run_ok(["git", "init", "-q"], tmp_path)
    run_ok(["git", "add", "-A"], tmp_path)
    run_ok(["git", "commit", "-q", "-m", "init"], tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_commit_is_dirty_only_when_code_changed(repository: Path) -> None:
    clean = git_commit()
    assert clean is not None
    assert len(clean) == 40
    # The pipeline rewrites these on every run: they do not make the code dirty.
    (repository / "dvc.lock").write_text("stages: {train: {}}\n")
    (repository / "outputs/metrics.json").write_text('{"rmse": 1}\n')
    assert git_commit() == clean
    (repository / "code.py").write_text("x = 2\n")
    assert git_commit() == f"{clean}-dirty"


def test_outside_a_repository_there_is_no_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() is None


def test_data_hash_and_stage_hashes_tolerate_odd_files(tmp_path: Path) -> None:
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: abc.dir\n  path: data\n")
    assert data_hash(dvc_file) == "abc.dir"
    dvc_file.write_text("not: [a dvc file")
    assert data_hash(dvc_file) is None
    lock = tmp_path / "dvc.lock"
    for text in ("stages:\n", "", "[1, 2]"):
        lock.write_text(text)
        assert stage_hashes(lock) == {}
    lock.write_text("stages:\n  train: {cmd: forkcast train}\n  evaluate: {cmd: forkcast evaluate}\n")
    hashes = stage_hashes(lock)
    assert set(hashes) == {"train", "evaluate"}
    assert hashes["train"] != hashes["evaluate"]

"""params.yaml, validated into typed settings (with the declaration of dataset.yaml beside it)."""

import shutil
from pathlib import Path

import pytest

from forkcast.config import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_params_file_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.train.model in {"hist_gradient_boosting", "random_forest"}
    assert params.validate_.min_share_of_checks_passed == 1.0
    assert params.dataset.target == "bikers"  # from dataset.yaml beside it


def write(tmp_path: Path, text: str) -> Path:
    """A params file with the project's declaration beside it."""
    shutil.copy(ROOT / "dataset.yaml", tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_the_old_data_section_says_where_the_data_is_declared_now(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"declared in dataset\.yaml now.*remove the `data` section"):
        load_params(write(tmp_path, "data:\n  target: bikers\n"))


def test_a_broken_declaration_fails_loading_the_params_naming_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    (tmp_path / "dataset.yaml").write_text(
        (tmp_path / "dataset.yaml").read_text().replace("frequency: hour", "frequency: fortnight")
    )
    with pytest.raises(ConfigError, match=r"dataset\.yaml: time\.frequency: 'fortnight' is not a frequency"):
        load_params(path)
    (tmp_path / "dataset.yaml").unlink()
    with pytest.raises(ConfigError, match=r"dataset\.yaml not found"):
        load_params(path)


def test_a_misspelled_key_fails_naming_it_and_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, "train:\n  modle: random_forest\n"))
    message = str(error.value)
    assert "unknown key 'train.modle'" in message
    assert "model" in message
    assert "random_forest" in message  # the sibling keys are listed


def test_a_misspelled_section_lists_the_sections(tmp_path: Path) -> None:
    allowed = "backtest, dataset, deploy, gate, monitor, serve, smoke, split, tracking, train, validate"
    with pytest.raises(ConfigError, match=rf"unknown key 'trian'; allowed here: {allowed}$"):
        load_params(write(tmp_path, "trian: {}\n"))


def test_a_nested_typo_names_the_full_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.random_forest.n_estimator'.*n_estimators"):
        load_params(write(tmp_path, "train:\n  random_forest:\n    n_estimator: 10\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("train:\n  model: xgboost\n", "train.model"),
        ("gate:\n  tolerance: -1\n", "gate.tolerance"),
        ("split:\n  test_fraction: 0.7\n", "split.test_fraction"),
        ("validate:\n  min_pass_rate: {hum.in_range: 1.5}\n", "validate.min_pass_rate.hum.in_range"),
    ],
)
def test_an_invalid_value_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=f"'{where}'"):
        load_params(write(tmp_path, text))


def test_not_yaml_and_not_a_mapping_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_settings_are_frozen() -> None:
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ValueError, match="frozen"):
        params.train.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        params.dataset.columns["temp"].min = 3  # type: ignore[misc]


def test_hyperparameters_are_those_of_the_chosen_family() -> None:
    dataset = load_params(ROOT / "params.yaml").dataset
    params = Params.model_validate(
        {"dataset": dataset, "train": {"model": "random_forest", "random_forest": {"n_estimators": 7}}}
    )
    assert params.train.hyperparameters()["n_estimators"] == 7
    assert "learning_rate" not in params.train.hyperparameters()

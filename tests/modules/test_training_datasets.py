"""Loading workflow datasets: scikit-learn's bundled sets and CSV files (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skipper.core.errors import NotFound, ValidationFailed
from skipper.core.settings import DatasetSpec
from skipper.modules.training.datasets import load_dataset


def sklearn(name: str, **fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": "sklearn", "name": name, **fields})


def csv_spec(path: Path | str, **fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"source": "csv", "path": str(path), **fields})


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- scikit-learn -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "rows", "n_features", "n_classes"),
    [
        ("diabetes", "regression", 442, 10, None),
        ("wine", "classification", 178, 13, 3),
        ("breast_cancer", "classification", 569, 30, 2),
        ("digits", "classification", 1797, 64, 10),
        ("iris", "classification", 150, 4, 3),
    ],
)
def test_bundled_sklearn_sets_load_with_their_named_features(
    name: str, kind: str, rows: int, n_features: int, n_classes: int | None
) -> None:
    from sklearn import datasets

    data = load_dataset(sklearn(name), kind, data_dir=Path("."))  # type: ignore[arg-type]

    assert data.features == [str(f) for f in getattr(datasets, f"load_{name}")().feature_names]
    assert data.x.shape == (rows, n_features) and data.x.dtype == np.float32
    assert data.targets == ["target"]
    if n_classes is None:
        assert data.classes is None and data.y.shape == (rows, 1)
    else:
        assert data.classes is not None and len(data.classes) == n_classes
        assert all(isinstance(c, str) for c in data.classes)
        assert data.y.shape == (rows,) and set(data.y.tolist()) == set(range(n_classes))


def test_diabetes_features_are_the_ten_clinical_measurements() -> None:
    data = load_dataset(sklearn("diabetes"), "regression", data_dir=Path("."))
    assert data.features == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def test_classification_labels_are_the_sets_target_names_as_strings() -> None:
    wine = load_dataset(sklearn("wine"), "classification", data_dir=Path("."))
    digits = load_dataset(sklearn("digits"), "classification", data_dir=Path("."))

    assert wine.classes == ["class_0", "class_1", "class_2"]
    assert digits.classes == [str(d) for d in range(10)]


def test_linnerud_loads_as_multi_output_regression_with_named_targets() -> None:
    data = load_dataset(sklearn("linnerud"), "regression", data_dir=Path("."))
    some = load_dataset(sklearn("linnerud", targets=["Pulse", "Weight"]), "regression", data_dir=Path("."))

    assert data.features == ["Chins", "Situps", "Jumps"]
    assert data.targets == ["Weight", "Waist", "Pulse"] and data.y.shape == (20, 3)
    assert some.targets == ["Pulse", "Weight"]
    np.testing.assert_array_equal(some.y[:, 1], data.y[:, 0])


def test_a_subset_of_sklearn_features_can_be_chosen_in_order() -> None:
    data = load_dataset(sklearn("diabetes", features=["bmi", "age"]), "regression", data_dir=Path("."))
    full = load_dataset(sklearn("diabetes"), "regression", data_dir=Path("."))

    assert data.features == ["bmi", "age"]
    np.testing.assert_array_equal(data.x, full.x[:, [2, 0]])


def test_an_unknown_sklearn_set_is_not_found() -> None:
    with pytest.raises(NotFound, match="boston"):
        load_dataset(sklearn("boston"), "regression", data_dir=Path("."))


def test_an_unknown_sklearn_feature_is_named_in_the_error() -> None:
    with pytest.raises(ValidationFailed, match="'height'") as info:
        load_dataset(sklearn("diabetes", features=["bmi", "height"]), "regression", data_dir=Path("."))
    assert info.value.details["missing"] == ["height"]


def test_a_continuous_target_cannot_train_a_classifier() -> None:
    with pytest.raises(ValidationFailed, match="regression"):
        load_dataset(sklearn("diabetes"), "classification", data_dir=Path("."))


# --- CSV ----------------------------------------------------------------------------------------


def test_a_csv_uses_every_other_column_as_a_feature_by_default(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y,c\n1,2,3,4\n5,6,7,8\n")

    data = load_dataset(csv_spec(path, targets=["y"]), "regression", data_dir=tmp_path)

    assert data.features == ["a", "b", "c"] and data.targets == ["y"]
    np.testing.assert_array_equal(data.x, [[1, 2, 4], [5, 6, 8]])
    np.testing.assert_array_equal(data.y, [[3], [7]])


def test_a_relative_csv_path_is_read_from_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / "sets").mkdir()
    write(tmp_path / "sets", "x,y\n1,2\n3,4\n", name="small.csv")

    data = load_dataset(csv_spec("sets/small.csv", targets=["y"]), "regression", data_dir=tmp_path)

    assert data.rows == 2 and data.features == ["x"]


def test_a_csv_classifier_takes_string_labels_in_sorted_order(tmp_path: Path) -> None:
    path = write(tmp_path, "width,height,species\n1.5,2,setosa\n3,4.25,virginica\n2,2,setosa\n5,1,versicolor\n")

    data = load_dataset(csv_spec(path, targets=["species"]), "classification", data_dir=tmp_path)

    assert data.classes == ["setosa", "versicolor", "virginica"]
    assert data.y.tolist() == [0, 2, 0, 1]
    assert data.features == ["width", "height"]


def test_numeric_csv_labels_sort_by_value(tmp_path: Path) -> None:
    path = write(tmp_path, "x,grade\n1,10\n2,2\n3,1\n")

    data = load_dataset(csv_spec(path, targets=["grade"]), "classification", data_dir=tmp_path)

    assert data.classes == ["1", "2", "10"]
    assert data.y.tolist() == [2, 1, 0]


def test_a_csv_may_have_several_regression_targets_and_chosen_features(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,unused,t1,t2\n1,2,9,3,4\n5,6,9,7,8\n")

    data = load_dataset(csv_spec(path, features=["b", "a"], targets=["t1", "t2"]), "regression", data_dir=tmp_path)

    assert data.features == ["b", "a"] and data.targets == ["t1", "t2"]
    np.testing.assert_array_equal(data.x, [[2, 1], [6, 5]])
    np.testing.assert_array_equal(data.y, [[3, 4], [7, 8]])


def test_a_missing_csv_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"nope\.csv"):
        load_dataset(csv_spec(tmp_path / "nope.csv", targets=["y"]), "regression", data_dir=tmp_path)


def test_a_missing_target_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,2\n")

    with pytest.raises(ValidationFailed, match="'price'") as info:
        load_dataset(csv_spec(path, targets=["price"]), "regression", data_dir=tmp_path)
    assert info.value.details["missing"] == ["price"]
    assert info.value.details["columns"] == ["a", "b"]


def test_a_missing_feature_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,2\n")

    with pytest.raises(ValidationFailed, match="'rooms'"):
        load_dataset(csv_spec(path, features=["a", "rooms"], targets=["y"]), "regression", data_dir=tmp_path)


def test_a_non_numeric_feature_value_names_its_column_and_row(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n4,five,6\n")

    with pytest.raises(ValidationFailed) as info:
        load_dataset(csv_spec(path, targets=["y"]), "regression", data_dir=tmp_path)

    assert "'b'" in info.value.message and "row 2" in info.value.message and "'five'" in info.value.message
    assert info.value.details == {"dataset": "data.csv", "column": "b", "row": 2, "line": 3, "value": "five"}


def test_a_non_numeric_regression_target_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,cheap\n")

    with pytest.raises(ValidationFailed, match=r"'y'.*'cheap'.*row 1"):
        load_dataset(csv_spec(path, targets=["y"]), "regression", data_dir=tmp_path)


def test_empty_and_not_finite_values_are_refused(tmp_path: Path) -> None:
    empty = write(tmp_path, "a,y\n1,2\n,3\n", name="empty.csv")
    nan = write(tmp_path, "a,y\n1,2\nnan,3\n", name="nan.csv")

    with pytest.raises(ValidationFailed, match=r"'a'.*row 2"):
        load_dataset(csv_spec(empty, targets=["y"]), "regression", data_dir=tmp_path)
    with pytest.raises(ValidationFailed, match="non-finite"):
        load_dataset(csv_spec(nan, targets=["y"]), "regression", data_dir=tmp_path)


def test_a_row_with_the_wrong_number_of_values_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,3\n4,5\n")

    with pytest.raises(ValidationFailed, match="row 2 has 2 values"):
        load_dataset(csv_spec(path, targets=["y"]), "regression", data_dir=tmp_path)


def test_a_csv_without_rows_or_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="no header"):
        load_dataset(csv_spec(write(tmp_path, "", name="e.csv"), targets=["y"]), "regression", data_dir=tmp_path)
    with pytest.raises(ValidationFailed, match="no rows"):
        load_dataset(csv_spec(write(tmp_path, "a,y\n", name="h.csv"), targets=["y"]), "regression", data_dir=tmp_path)


def test_a_csv_classifier_needs_one_target_and_two_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "a,l1,l2\n1,x,y\n2,x,y\n")

    with pytest.raises(ValidationFailed, match="exactly one target"):
        load_dataset(csv_spec(path, targets=["l1", "l2"]), "classification", data_dir=tmp_path)
    with pytest.raises(ValidationFailed, match="at least two classes"):
        load_dataset(csv_spec(path, features=["a"], targets=["l1"]), "classification", data_dir=tmp_path)


def test_a_csv_needs_its_targets_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="target"):
        load_dataset(csv_spec(write(tmp_path, "a,y\n1,2\n")), "regression", data_dir=tmp_path)

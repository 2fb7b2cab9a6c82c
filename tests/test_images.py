"""Task image_classification without the stack: builtin://digits and uploaded ImageFolder archives load as pixel rows,
a CNN learns them (validated each epoch, checkpointed, resumable), exports to ONNX with parity, and the inference
server's row builder prepares a PNG exactly as the loader prepared the training images."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from domain.features import FeatureRecipe
from domain.frameworks import ParamsError, resolve_params
from infra.datasets import DatasetError, load_dataset, validate_dataset
from infra.dataset_uploads import list_uploads, store_upload
from infra.onnx_runtime import session_for
from runners.onnx_converter import export_onnx
from runners.trainers import TrainSpec, TrainingCancelled, trainer_for
from serving.state import LoadedModel, PredictError, answer, rows_of
from tests.support.images import declared_huge_png, digit_folder, digit_png, png, zipped

DIGITS = "builtin://digits"
FAST = {"epochs": 20, "lr": 0.003}


class Steps:
    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.stop_after = stop_after

    def step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, metrics))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


@pytest.fixture(scope="module")
def digits_model():
    steps = Steps()
    spec = TrainSpec("pytorch", "image_classification", DIGITS, None, FAST, seed=0)
    return trainer_for("pytorch", "image_classification").fit(spec, steps), steps


def test_a_digits_cnn_reaches_95_percent_validating_every_epoch(digits_model) -> None:
    result, steps = digits_model
    assert [s for s, _ in steps.steps] == list(range(1, 21))
    assert all({"train_loss", "valid_loss", "valid_accuracy"} <= set(m) for _, m in steps.steps)
    assert result.final_metrics["accuracy"] >= 0.95, result.final_metrics
    assert set(result.final_metrics) >= {"accuracy", "logloss", "f1_macro"}
    assert result.class_labels == tuple(str(d) for d in range(10)) and result.best_step == 20
    validation = result.evaluation["splits"]["validation"]
    assert validation["rows"] == 360 and "feature_importance" not in result.evaluation
    assert [c["label"] for c in validation["per_class"]] == [str(d) for d in range(10)]
    assert sum(c["support"] for c in validation["per_class"]) == 360
    assert validation["confusion_matrix"]["labels"] == [str(d) for d in range(10)]
    assert result.feature_recipe["image"] == {"height": 8, "width": 8, "channels": 1, "pixel_max": 16.0,
                                              "layout": "chw", "resample": "bilinear"}


def test_the_cnn_exports_to_onnx_with_parity(digits_model) -> None:
    result, _ = digits_model
    split = load_dataset(DIGITS, None, "image_classification")
    exported = export_onnx("pytorch", "image_classification", result.model_bytes, split)
    assert exported.parity["passed"] and exported.parity["max_abs_diff"] <= 1e-4
    assert exported.model.input_shape == [None, 64] and exported.model.output_name == "probabilities"


def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    params = {"epochs": 6, "lr": 0.003, "augment": True, "channels": [8]}
    whole = trainer_for("pytorch", "image_classification").fit(
        TrainSpec("pytorch", "image_classification", DIGITS, None, params, seed=3), Steps())
    saved: dict[int, bytes] = {}
    saving = TrainSpec("pytorch", "image_classification", DIGITS, None, params, seed=3,
                       checkpoint=lambda step, data: saved.__setitem__(step, data), checkpoint_every_steps=2)
    with pytest.raises(TrainingCancelled):
        trainer_for("pytorch", "image_classification").fit(saving, Steps(stop_after=5))
    step = max(saved)
    (tmp_path / "ckpt").write_bytes(saved[step])
    steps = Steps()
    resumed = trainer_for("pytorch", "image_classification").fit(TrainSpec(
        "pytorch", "image_classification", DIGITS, None, params, seed=3, resume_from=tmp_path / "ckpt"), steps)
    assert steps.steps[0][0] == step + 1
    assert resumed.final_metrics == whole.final_metrics


def test_image_jobs_are_refused_what_does_not_apply_naming_the_field() -> None:
    with pytest.raises(ParamsError) as e:
        resolve_params("lightgbm", "image_classification", {})
    assert e.value.field == "framework"
    with pytest.raises(ParamsError) as e:
        resolve_params("pytorch", "multiclass_classification", {"channels": [8]})
    assert e.value.field == "params.channels"
    assert resolve_params("pytorch", "image_classification", {"channels": [8, 16], "augment": True})["augment"]
    for uri, target, task, field in [(DIGITS, None, "multiclass_classification", "task"),
                                     ("builtin://wine", None, "image_classification", "task"),
                                     ("file:///nowhere/x.csv", None, "image_classification", "dataset.uri"),
                                     ("file:///nowhere/x.zip", "label", "image_classification", "dataset.target")]:
        with pytest.raises(DatasetError) as d:
            validate_dataset(uri, target, task, [Path("/nowhere")])
        assert d.value.field == field, (uri, d.value)


def store(tmp_path: Path, data: bytes, name: str = "images.zip", **limits):
    from infra.image_folders import ImageLimits

    return store_upload(io.BytesIO(data), name, None, tmp_path, 50 * 1024 * 1024, project="default",
                        image_limits=ImageLimits(**limits))


def test_an_uploaded_image_folder_loads_as_the_most_common_size_and_trains(tmp_path: Path) -> None:
    members = digit_folder(per_class=12, size=16, top="digits/")
    members["digits/7/odd-size.png"] = digit_png(5, size=24)  # resized to 16 x 16 with the rest
    members["digits/.DS_Store"] = b"junk"  # hidden files and __MACOSX are skipped
    members["__MACOSX/digits/._0"] = b"junk"
    stored = store(tmp_path, zipped(members))
    assert stored.rows == 37 and stored.classes == ["0", "1", "7"] and stored.uri.endswith("-images.zip")
    assert [d.uri for d in list_uploads(tmp_path, project="default")] == [stored.uri]
    assert list_uploads(tmp_path, project="default")[0].classes == ["0", "1", "7"]
    split = load_dataset(stored.uri, None, "image_classification", roots=[tmp_path])
    assert split.X_train.shape[1] == 256 and split.class_labels == ["0", "1", "7"]
    assert split.recipe.image.to_json()["pixel_max"] == 255.0 and split.X_train.max() <= 255
    result = trainer_for("pytorch", "image_classification").fit(TrainSpec(
        "pytorch", "image_classification", stored.uri, None, {"epochs": 3}, dataset_roots=(tmp_path,)), Steps())
    assert len(result.evaluation["splits"]["validation"]["per_class"]) == 3


NOISE = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
HOSTILE = {
    "an image over the pixel cap": (zipped(digit_folder(size=16)), {"max_pixels": 100}, "at most 100 per image"),
    "more images than allowed": (zipped(digit_folder()), {"max_images": 20}, "more than 20 images"),
    "more decoded bytes than allowed": (zipped(digit_folder(size=16)), {"max_decoded_bytes": 5000},
                                        "decode to more than 5,000 bytes"),
    "an image file over its byte cap": (zipped(digit_folder()), {"max_file_bytes": 50}, "over 50 bytes"),
    "a decompression bomb": (zipped({**digit_folder(), "0/bomb.png": declared_huge_png(5000, 5000)}), {},
                             "pixels"),
    "a truncated image": (zipped({**digit_folder(), "0/cut.png": NOISE[:len(NOISE) // 2]}), {},
                          "truncated or corrupt"),
    "a GIF": (zipped({**digit_folder(), "0/a.gif": png(np.zeros((4, 4)), "GIF")}), {}, "not a PNG or JPEG"),
    "a text file": (zipped({**digit_folder(), "1/notes.txt": b"hello"}), {}, "not a PNG or JPEG"),
    "a path out of the archive": (zipped({**digit_folder(), "../escape/1.png": digit_png(1)}), {}, "'..'"),
    "an image outside a class folder": (zipped({**digit_folder(), "loose.png": digit_png(1)}), {},
                                        "one folder per class"),
    "one class only": (zipped(digit_folder(classes=(3,))), {}, "at least 2 class folders"),
    "not an archive": (b"just some bytes, not a zip", {}, "not a .zip or .tar.gz"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archives_are_refused_naming_the_field(tmp_path: Path, case: str) -> None:
    data, limits, words = HOSTILE[case]
    with pytest.raises(DatasetError) as e:
        store(tmp_path, data, **limits)
    assert e.value.field == "file" and words in e.value.reason, e.value.reason
    assert list_uploads(tmp_path, project="default") == [] and not list((tmp_path / "uploads").glob(".upload-*"))


def test_archive_caps_and_links_of_code_bundles_hold_for_images(tmp_path: Path) -> None:
    from infra.bundle_members import BundleLimits
    from tests.support.images import tarred

    bomb = zipped({**digit_folder(), "0/zeros.png": b"\0" * 2_000_000})
    for data, limits, words in [(bomb, {"archive": BundleLimits(max_unpacked_bytes=1_000_000)}, "more than 1,000,000"),
                                (zipped(digit_folder()), {"archive": BundleLimits(max_files=10)}, "more than 10"),
                                (tarred(digit_folder(), {"0/link.png": "../../etc/passwd"}), {}, "outside"),
                                (tarred(digit_folder(), {"0/link.png": "1.png"}), {}, "is a link")]:
        with pytest.raises(DatasetError) as e:
            store(tmp_path, data, "images.tar.gz" if data[:2] == b"\x1f\x8b" else "images.zip", **limits)
        assert e.value.field == "file" and words in e.value.reason, e.value.reason


def served_model(result) -> LoadedModel:
    split = load_dataset(DIGITS, None, "image_classification")
    onnx = export_onnx("pytorch", "image_classification", result.model_bytes, split).model
    return LoadedModel(model="digits", version=1, sha256="x", session=session_for(onnx.onnx_bytes),
                       input_name="input", output_name="probabilities", n_features=64, feature_index={},
                       class_labels=result.class_labels, task="image_classification",
                       recipe=FeatureRecipe.from_json(result.feature_recipe))


def test_the_server_prepares_a_png_as_the_loader_did_and_answers_its_digit(digits_model) -> None:
    model = served_model(digits_model[0])
    digits = load_digits()
    held_out = [1700, 1701, 1702, 1703]  # predicted from a PNG, an 8x8 pixel array and a 32x32 PNG alike
    instances = ([{"image": base64.b64encode(digit_png(i)).decode()} for i in held_out]
                 + [{"pixels": digits.images[i].tolist()} for i in held_out]
                 + [{"image": "data:image/png;base64," + base64.b64encode(digit_png(i, size=32)).decode()}
                    for i in held_out])
    X = rows_of(instances, model)
    assert np.abs(X[:4] - digits.data[held_out]).max() <= 16 / 255  # the PNG's rounding, no more
    out = answer(model, model.run(X))
    truth = [str(digits.target[i]) for i in held_out]
    assert out["predictions"][:8] == truth * 2 and out["classes"] == [str(d) for d in range(10)]
    assert sum(p == t for p, t in zip(out["predictions"][8:], truth)) >= 3  # upscaled then shrunk back: close
    assert rows_of([digits.data[1700].tolist()], model).shape == (1, 64)  # a flat row of 64 numbers still works


@pytest.mark.parametrize("instance, field", [
    ({"image": base64.b64encode(declared_huge_png(50_000, 50_000)).decode()}, "instances.0.image"),
    ({"image": "not base64!"}, "instances.0.image"),
    ({"image": base64.b64encode(b"GIF89a....").decode()}, "instances.0.image"),
    ({"pixels": [[0] * 8] * 7}, "instances.0.pixels"),
    ({"pixels": [[0] * 8] * 7 + [[0] * 7 + [17]]}, "instances.0.pixels.7.7"),
    ({"pixels": [[0] * 8] * 8, "image": "x"}, "instances.0"),
])
def test_the_server_refuses_what_is_not_an_image_of_the_model_naming_the_field(digits_model, instance,
                                                                                 field) -> None:
    with pytest.raises(PredictError) as e:
        rows_of([instance], served_model(digits_model[0]))
    assert e.value.status == 422 and e.value.field == field, e.value.detail

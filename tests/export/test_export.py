"""The exporter's recipe checks and archive building, on small weights made here (no TorchServe needed)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from cxrexplain import ClassifierBundle
from cxrexplain.models import build_classifier, save_classifier
from cxrexplain.spec import unit_spec
from export import archive, cli
from export.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(tmp_path) -> Path:
    module = build_classifier("densenet_small", 3, 1)
    bundle = ClassifierBundle(module, ["A", "B", "C"], input_spec=unit_spec(1, 32), architecture="densenet_small")
    return save_classifier(bundle, tmp_path / "w" / "clf.pt")


def write_recipe(tmp_path: Path, models: list[dict]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def entry(**overrides) -> dict:
    return {"name": "m", "kind": "classifier", "architecture": "densenet_small", "weights": "w/clf.pt", **overrides}


@pytest.mark.parametrize("bad, message", [
    ({"batch_size": "four"}, "field 'batch_size' must be int"),
    ({"kind": "segmenter"}, "kind must be one of"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"autoencoder": "nope"}, "is not an autoencoder entry"),
    ({"kind": "autoencoder", "stream": True}, "stream applies to classifiers only"),
    ({"stream": "yes"}, "field 'stream' must be bool"),
    ({"torch_threads": 1.5}, "field 'torch_threads' must be int"),
    ({"semantic": {"concepts": "phantom"}}, "semantic needs 'layer'"),
    ({"semantic": {"layer": "features", "concepts": "imagenet"}}, "semantic.concepts must be one of phantom"),
    ({"semantic": {"layer": "features", "concepts": "phantom", "n": "many"}}, "semantic.n must be int"),
    ({"semantic": {"layer": "features", "concepts": "phantom", "units": 3}}, "semantic has unknown key(s) units"),
    ({"semantic": {"layer": "features", "concepts": {"images": "w"}}}, "takes images: DIR and masks: DIR"),
    ({"semantic": {"layer": "features", "concepts": {"images": ".", "masks": "nowhere"}}},
     "semantic.concepts.masks: .*nowhere does not exist"),
    ({"kind": "autoencoder", "semantic": {"layer": "x", "concepts": "phantom"}}, "semantic applies to classifiers"),
])
def test_recipe_errors_name_the_entry_and_field(tmp_path, bad, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_recipe(write_recipe(tmp_path, [entry(**bad)]))
    assert "models[0]" in str(err.value) or "m:" in str(err.value)


def test_missing_field_and_duplicates(tmp_path):
    raw = entry()
    del raw["weights"]
    with pytest.raises(RecipeError, match="missing required field 'weights'"):
        load_recipe(write_recipe(tmp_path, [raw]))
    with pytest.raises(RecipeError, match="duplicate model name"):
        load_recipe(write_recipe(tmp_path, [entry(), entry()]))


def test_missing_weights_file_is_a_clear_cli_error(tmp_path, capsys):
    recipe = write_recipe(tmp_path, [entry(weights="nowhere/clf.pt")])
    assert cli.main([str(recipe), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/clf.pt" in err and "densenet_small" in err
    assert not list(tmp_path.glob("store/*.mar"))


def test_unknown_architecture_is_a_clear_cli_error(tmp_path, weights, capsys):
    recipe = write_recipe(tmp_path, [entry(architecture="resnet9000")])
    assert cli.main([str(recipe), "--store", str(tmp_path / "store")]) == 2
    assert "resnet9000" in capsys.readouterr().err


def test_semantic_with_a_wrong_layer_is_a_clear_cli_error(tmp_path, weights, capsys):
    # dissection runs at export time: a layer the model lacks stops the export, naming the field and the fix
    recipe = write_recipe(tmp_path, [entry(onnx=False, semantic={"layer": "features.block9", "concepts": "phantom",
                                                                  "n": 2})])
    assert cli.main([str(recipe), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "m: semantic.layer" in err and "features.block9" in err and "named_modules" in err
    assert not list(tmp_path.glob("store/*.mar"))


def test_export_builds_archive_and_manifest(tmp_path, weights):
    recipe = write_recipe(tmp_path, [entry(batch_size=2, version="2.0", torch_threads=1, warm_up=False)])
    store = tmp_path / "store"
    assert cli.main([str(recipe), "--store", str(store)]) == 0
    manifest = json.loads((store / "manifest.json").read_text())["models"]
    (record,) = manifest
    assert record["labels"] == ["A", "B", "C"] and record["version"] == "2.0"
    assert record["onnx_max_abs_diff"] <= 1e-4
    assert record["archive_sha256"] == archive.sha256(store / "m.mar")
    names = zipfile.ZipFile(store / "m.mar").namelist()
    for required in ("cxrexplain_handler.py", "cxrexplain/__init__.py", "classifier.pt", "classifier.json",
                     "model.onnx", "serve.json", "MAR-INF/MANIFEST.json"):
        assert required in names, required
    assert not any("__pycache__" in n for n in names)
    serve = json.loads(zipfile.ZipFile(store / "m.mar").read("serve.json"))
    assert serve["torch_threads"] == 1 and serve["warm_up"] is False  # read by the handler's initialize
    assert not list(store.glob(".export-*"))  # no staging left behind


def test_archive_ships_what_serving_runs_and_no_lab(tmp_path, weights):
    recipe = write_recipe(tmp_path, [entry(onnx=False)])
    store = tmp_path / "store"
    assert cli.main([str(recipe), "--store", str(store)]) == 0
    names = zipfile.ZipFile(store / "m.mar").namelist()
    packages = {n.split("/")[0] for n in names if n.endswith(".py") and "/" in n}
    assert packages == {"cxrexplain", "cxrexplain_imageio", "cxrexplain_serving", "cxrexplain_render"}
    lab_modules = {p.stem for p in (ROOT / "lab" / "cxrexplain_lab").glob("*.py")} - {"__init__"}
    assert lab_modules >= {"phantom", "train", "losses", "metrics"}
    shipped_modules = {Path(n).stem for n in names if n.endswith(".py")}
    assert not lab_modules & shipped_modules, lab_modules & shipped_modules
    assert not any("cxrexplain_lab" in n or "tqdm" in n for n in names)


def test_stream_true_writes_a_sequence_batching_twin(tmp_path, weights):
    recipe = write_recipe(tmp_path, [entry(batch_size=2, stream=True, onnx=False)])
    store = tmp_path / "store"
    assert cli.main([str(recipe), "--store", str(store)]) == 0
    (record,) = json.loads((store / "manifest.json").read_text())["models"]
    assert record["stream_archive"] == "m-stream.mar"
    assert record["stream_archive_sha256"] == archive.sha256(store / "m-stream.mar")

    def model_config(name: str) -> dict:
        with zipfile.ZipFile(store / name) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
            return {"name": manifest["modelName"], **yaml.safe_load(mar.read(manifest["configFile"]))}

    plain, twin = model_config("m.mar"), model_config("m-stream.mar")
    assert plain["name"] == "m" and "sequenceBatching" not in plain and plain["batchSize"] == 2
    assert twin["name"] == "m-stream" and twin["sequenceBatching"] is True and twin["sequenceMaxIdleMSec"] > 0
    assert twin["batchSize"] == 2
    with pytest.raises(RecipeError, match="m-stream"):
        load_recipe(write_recipe(tmp_path, [entry(stream=True), entry(name="m-stream")]))


def test_interrupted_archiving_leaves_no_half_written_archive(tmp_path, monkeypatch):
    store = tmp_path / "store"
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "serve.json").write_text("{}")
    monkeypatch.setattr(archive, "HANDLER", tmp_path / "missing_handler.py")  # the archiver fails midway
    with pytest.raises(Exception):  # noqa: B017 - whatever the archiver raises, nothing may be left
        archive.build_mar("m", "1.0", staging, store, tmp_path / "cfg.yaml")
    assert not list(store.iterdir())

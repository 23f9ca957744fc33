"""The gateway's configuration contract and its on-disk store, without a network: the example configuration
is the contract (it must load as documented); each mistake names its key; the store survives a restart and
a crash between its two writes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from dicom_samples import make_dicom, ramp12

from cxrexplain_gateway import ConfigError, InstanceStore, load_config, parse_config
from cxrexplain_gateway.cli import main
from cxrexplain_gateway.config import DimseDestination, StowDestination

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "gateway.example.yaml"


@pytest.fixture
def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_configuration_loads_as_documented() -> None:
    config = load_config(EXAMPLE)
    assert config.listen.ae_title == "CXREXPLAIN" and config.listen.port == 11112
    assert config.listen.accept_calling is None  # [ANY]
    assert config.service.token_file == REPO / ".run" / "key_file.json"  # from the file's folder
    assert config.storage == REPO / "var" / "gateway"
    assert config.service.methods == ("cam", "rap", "latent_shift") and config.service.targets == "positive"
    assert config.destination == DimseDestination("ORTHANC", "127.0.0.1", 4242, calling_ae_title="CXREXPLAIN")
    assert config.outputs == ("sr", "parametric_map", "secondary_capture", "latent_shift_cine")
    assert config.metrics is not None and config.metrics.port == 8083
    assert config.processing.retries == 3


def test_stow_destination_and_calling_list(example: dict[str, Any], tmp_path: Path) -> None:
    example["destination"] = {"kind": "stow", "url": "http://pacs:8042/dicom-web", "username": "gw",
                              "password_file": "secrets/pw"}
    example["listen"]["accept_calling"] = ["PACS1", "CR_ROOM2"]
    example["service"]["targets"] = ["Cardiomegaly", "Effusion"]
    config = parse_config(example, base=tmp_path)
    assert config.destination == StowDestination("http://pacs:8042/dicom-web", "gw", tmp_path / "secrets" / "pw")
    assert config.listen.accept_calling == ("PACS1", "CR_ROOM2")
    assert config.service.targets == ("Cardiomegaly", "Effusion")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()
MISTAKES = [
    ("destination.kind", "fhir", "destination.kind: got 'fhir'; write dimse"),
    ("destination.port", _DELETE, "destination.port: missing"),
    ("listen.port", 70000, "listen.port: expected a TCP port number from 1 to 65535"),
    ("listen.ae_title", "A-VERY-LONG-AE-TITLE", "listen.ae_title: 'A-VERY-LONG-AE-TITLE' is not an AE title"),
    ("listen.accept_calling", ["ANY", "PACS1"], "listen.accept_calling: ANY accepts every calling AE title"),
    ("listen.colour", "blue", "listen.colour: unknown key"),
    ("outputs", ["sr", "pdf"], "outputs: unknown ['pdf']: choose from"),
    ("service.model", _DELETE, "service.model: missing; add it, e.g. model: cxr-densenet"),
    ("service.transport", "soap", "service.transport: got 'soap'; write rest or grpc"),
    ("storage", _DELETE, "storage: missing"),
    ("processing", {"retries": -1}, "processing.retries: expected a whole number >= 0"),
    ("destination", {"kind": "stow", "url": "http://x/dicom-web", "username": "gw"},
     "destination.username: give both username and password_file"),
]


@pytest.mark.parametrize(("key", "value", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_its_key(example: dict[str, Any], key: str, value: Any, message: str) -> None:
    data = copy.deepcopy(example)
    _set(data, key, value)
    with pytest.raises(ConfigError, match="gateway.yaml: ") as info:
        parse_config(data, base=Path("/srv"), source=Path("gateway.yaml"))
    assert message in str(info.value)


def test_the_command_refuses_a_bad_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(EXAMPLE.read_text().replace("port: 11112", "port: eleven"))
    assert main(["--config", str(path)]) == 2
    assert "listen.port: expected a TCP port number" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "pass --config with the path of your gateway.yaml" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the store
def _instance() -> Any:
    return make_dicom(ramp12(), modality="CR")


def test_a_restart_finds_what_was_received_and_its_attempts(tmp_path: Path) -> None:
    first, second = _instance(), _instance()
    store = InstanceStore(tmp_path)
    store.receive(first)
    store.receive(second)
    store.attempt_failed(first.SOPInstanceUID, "ServerUnavailable: down", "gw-1")

    again = InstanceStore(tmp_path)  # a new process on the same storage
    pending = {r.uid: r for r in again.pending()}
    assert set(pending) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert pending[first.SOPInstanceUID].attempts == 1 and pending[first.SOPInstanceUID].request_id == "gw-1"
    np.testing.assert_array_equal(again.load(second.SOPInstanceUID).pixel_array, second.pixel_array)

    again.mark_failed(first.SOPInstanceUID)
    again.mark_done(second.SOPInstanceUID, ["1.2.3"], "req-2")
    assert not again.pending() and not list(again.incoming.iterdir())
    assert (again.failed / f"{first.SOPInstanceUID}.dcm").exists()  # kept for an operator
    assert json.loads((again.done / f"{second.SOPInstanceUID}.json").read_text())["results"] == ["1.2.3"]
    assert again.record(first.SOPInstanceUID).state == "failed"  # type: ignore[union-attr]
    assert not list(again.tmp.iterdir())


def test_an_image_without_its_state_is_still_pending(tmp_path: Path) -> None:
    """A crash between the image's write and its state's: the image was not acknowledged, but it is whole,
    so it is taken up (a fresh state, no attempts)."""
    ds = _instance()
    store = InstanceStore(tmp_path)
    store.receive(ds)
    (store.incoming / f"{ds.SOPInstanceUID}.json").unlink()
    (record,) = InstanceStore(tmp_path).pending()
    assert record.uid == ds.SOPInstanceUID and record.attempts == 0 and record.state == "received"


def test_a_uid_that_is_not_a_uid_never_becomes_a_path(tmp_path: Path) -> None:
    ds = _instance()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom warns; the store must refuse
        ds.SOPInstanceUID = "../../etc/passwd"
    with pytest.raises(ValueError, match="not a valid UID"):
        InstanceStore(tmp_path / "s").receive(ds)
    assert not list((tmp_path / "s" / "incoming").iterdir())

"""The direction bank (hspace.bank) and `hspace bank`: round trips, crash safety, integrity, names, edit.

Oracles: tensors compared bit for bit with what the test made; edits compared with
hspace.sampler.sample given the delta the test builds by hand; checksums with hashlib directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import hspace.bank.store as bank_module
from hspace.bank import Direction, check_name, latest_version, list_versions, load_bank, publish
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.sampler import sample, to_uint8

T = 3
FINGERPRINT = "f" * 64


def directions(h_shape=(32, 8, 8), *, seed=0, fingerprint=FINGERPRINT, names=("a", "b"), dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [
        Direction(
            name=name,
            tensor=torch.randn((T, *h_shape), generator=generator).to(dtype),
            method="supervised",
            parameters={"k": 16, "attribute": name, "gammas": [1.0, 2.5]},
            source="memory://corpus",
            fingerprint=fingerprint,
            evaluation={"auc": 0.75 + i / 10, "effect": {"gamma_2": -0.5}},
        )
        for i, name in enumerate(names)
    ]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On this shared 2-core machine, 2 intra-op threads under load were 40x slower than 1 for the tiny model
    (sample of 2 seeds x 3 steps: 9.0 s vs 0.1-0.2 s); edit and its oracle run under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "bank")
    return f"memory://bank-{uuid.uuid4().hex}"


def fs_path(url):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def flip_byte(url, relative, *, at=-1):
    fs, root = fs_path(url)
    path = f"{root}/{relative}"
    data = bytearray(fs.cat_file(path))
    data[at] ^= 0x01
    fs.pipe_file(path, bytes(data))


# ----- round trips ---------------------------------------------------------------------------------
def test_round_trip_of_tensors_and_metadata(url):
    made = directions() + directions(names=("half",), seed=1, dtype=torch.float16)
    version = publish(url, made, model_fingerprint=FINGERPRINT, eta=0.5, timesteps=[666, 333, 0], notes="weekly")
    assert version == "v0001" and latest_version(url) == "v0001" and list_versions(url) == ["v0001"]
    bank = load_bank(url)
    assert (bank.version, bank.fingerprint, bank.names) == ("v0001", FINGERPRINT, ("a", "b", "half"))
    assert (bank.steps, bank.eta, bank.timesteps, bank.h_shape, bank.notes) == (
        T,
        (0.5, 0.5, 0.5),
        (666, 333, 0),
        (32, 8, 8),
        "weekly",
    )
    for direction in made:
        loaded = bank[direction.name]
        assert loaded.tensor.dtype == direction.tensor.dtype
        assert torch.equal(loaded.tensor, direction.tensor)
        assert (
            loaded.record()
            == direction.record()
            == {
                "method": "supervised",
                "parameters": direction.parameters,
                "source": "memory://corpus",
                "fingerprint": FINGERPRINT,
                "evaluation": direction.evaluation,
            }
        )
    info = json.loads(json.dumps(bank.info()))
    assert info["directions"]["a"]["parameters"] == {"k": 16, "attribute": "a", "gammas": [1.0, 2.5]}
    # The recorded checksum is the sha256 of the file, computed here independently.
    fs, root = fs_path(url)
    file = fs.cat_file(f"{root}/versions/v0001/b.safetensors")
    assert info["directions"]["b"]["sha256"] == hashlib.sha256(file).hexdigest()
    assert bank.verify() == ["a", "b", "half"]


def test_direction_fields_are_validated():
    good = directions()[0]
    for change, message in [
        ({"method": "magic"}, "has method 'magic'"),
        ({"tensor": torch.zeros(3, 4)}, r"shape \(T, C, H, W\); got torch.float32 \(3, 4\)"),
        ({"tensor": torch.zeros(1, 2, 2, 2, dtype=torch.int64)}, "floating tensor"),
        ({"tensor": torch.full((1, 2, 2, 2), float("nan"))}, "NaN or infinite"),
        ({"parameters": {"bad": object()}}, "must be JSON-able"),
        ({"evaluation": {"r2": float("nan")}}, "must be JSON-able"),
        ({"evaluation": [1, 2]}, "must be a dict"),
    ]:
        with pytest.raises(HSpaceError, match=message):
            dataclasses.replace(good, **change)


def test_publish_refuses_mixed_shapes_fingerprints_and_duplicates(url):
    a, b = directions()
    with pytest.raises(HSpaceError, match="made for another model"):
        publish(url, [a, dataclasses.replace(b, fingerprint="0" * 64)], model_fingerprint=FINGERPRINT)
    with pytest.raises(HSpaceError, match="share one shape"):
        publish(url, [a, dataclasses.replace(b, tensor=torch.zeros(T + 1, 32, 8, 8))], model_fingerprint=FINGERPRINT)
    with pytest.raises(HSpaceError, match="unique"):
        publish(url, [a, dataclasses.replace(b, name="A")], model_fingerprint=FINGERPRINT)
    with pytest.raises(HSpaceError, match="at least one direction"):
        publish(url, [], model_fingerprint=FINGERPRINT)
    with pytest.raises(HSpaceError, match="eta has 2 values"):
        publish(url, [a], model_fingerprint=FINGERPRINT, eta=[1.0, 0.0])
    assert list_versions(url) == []


# ----- versions ------------------------------------------------------------------------------------
def test_two_versions_both_readable_latest_is_newest(url):
    first, second = directions(seed=0), directions(seed=1, names=("a", "c"))
    assert publish(url, first, model_fingerprint=FINGERPRINT) == "v0001"
    assert publish(url, second, model_fingerprint=FINGERPRINT) == "v0002"
    assert list_versions(url) == ["v0001", "v0002"] and latest_version(url) == "v0002"
    assert load_bank(url).version == "v0002" and load_bank(url).names == ("a", "c")
    old = load_bank(url, "v0001")
    assert old.names == ("a", "b") and torch.equal(old.tensor("a"), first[0].tensor)
    assert torch.equal(load_bank(url, "v0002").tensor("a"), second[0].tensor)
    with pytest.raises(HSpaceError, match="has no version 'v0009'; it has v0001, v0002"):
        load_bank(url, "v0009")


def test_versions_are_immutable_and_reruns_are_no_ops(url):
    made = directions()
    assert publish(url, made, model_fingerprint=FINGERPRINT) == "v0001"
    fs, root = fs_path(url)
    manifest = fs.cat_file(f"{root}/versions/v0001/manifest.json")
    # The same content again (even as fresh objects, in another order): the same version, nothing written.
    assert publish(url, directions()[::-1], model_fingerprint=FINGERPRINT) == "v0001"
    assert publish(url, made, model_fingerprint=FINGERPRINT, version="v0001") == "v0001"
    assert fs.cat_file(f"{root}/versions/v0001/manifest.json") == manifest
    assert list_versions(url) == ["v0001"]
    changed = [dataclasses.replace(made[0], evaluation={"auc": 0.1}), made[1]]
    with pytest.raises(HSpaceError, match="exists with other content and versions are immutable"):
        publish(url, changed, model_fingerprint=FINGERPRINT, version="v0001")
    with pytest.raises(HSpaceError, match="exists with other content"):
        publish(url, made, model_fingerprint=FINGERPRINT, version="v0001", eta=0.0)
    assert fs.cat_file(f"{root}/versions/v0001/manifest.json") == manifest
    # Named versions sit beside the numbered ones; the numbering continues after the highest vNNNN.
    assert publish(url, changed, model_fingerprint=FINGERPRINT, version="2026-12-weekly") == "2026-12-weekly"
    assert latest_version(url) == "2026-12-weekly"
    assert publish(url, made, model_fingerprint=FINGERPRINT, eta=0.0) == "v0002"
    assert list_versions(url) == ["v0001", "2026-12-weekly", "v0002"] and latest_version(url) == "v0002"


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])  # 1-2: tensor files, 3: the manifest, 4: the latest pointer
def test_publish_killed_midway_keeps_latest_and_a_rerun_completes(url, monkeypatch, kill_at):
    first = directions(seed=0)
    publish(url, first, model_fingerprint=FINGERPRINT)
    fs, root = fs_path(url)
    latest_before = fs.cat_file(f"{root}/latest")
    real_put, calls = bank_module.put_whole, []

    def dying_put(fs_, path, data):
        calls.append(path)
        if len(calls) == kill_at:
            raise Killed(path)
        real_put(fs_, path, data)

    monkeypatch.setattr(bank_module, "put_whole", dying_put)
    second = directions(seed=1)
    with pytest.raises(Killed):
        publish(url, second, model_fingerprint=FINGERPRINT)
    monkeypatch.setattr(bank_module, "put_whole", real_put)
    assert calls[-1].endswith(("a.safetensors", "b.safetensors", "manifest.json", "latest")[kill_at - 1])

    assert fs.cat_file(f"{root}/latest") == latest_before
    bank = load_bank(url)
    assert bank.version == "v0001" and torch.equal(bank.tensor("b"), first[1].tensor) and bank.verify()
    if kill_at < 4:
        assert list_versions(url) == ["v0001"]  # a version without its manifest does not exist
    if url.startswith("/"):
        assert sorted(os.listdir(f"{root}/versions")) == (["v0001", "v0002"] if kill_at == 4 else ["v0001"])

    # The rerun gets the same name whatever the crash point, and latest moves only now.
    assert publish(url, second, model_fingerprint=FINGERPRINT) == "v0002"
    assert list_versions(url) == ["v0001", "v0002"] and load_bank(url).version == "v0002"
    assert torch.equal(load_bank(url)["a"].tensor, second[0].tensor) and load_bank(url).verify()


# ----- integrity -----------------------------------------------------------------------------------
def test_a_flipped_byte_in_a_tensor_file_is_detected(url, tiny):
    made = directions(tiny.h_shape, fingerprint=tiny.fingerprint)
    publish(url, made, model_fingerprint=tiny.fingerprint)
    flip_byte(url, "versions/v0001/b.safetensors")  # the last byte: tensor data
    bank = load_bank(url)  # the manifest is fine
    assert torch.equal(bank.tensor("a"), made[0].tensor)
    with pytest.raises(HSpaceError, match=r"direction 'b' .* b.safetensors is damaged \(sha256"):
        bank.tensor("b")
    with pytest.raises(HSpaceError, match="1 of 2 directions are damaged"):
        bank.verify()
    with pytest.raises(HSpaceError, match="b.safetensors is damaged"):
        edit(tiny, [0], {"b": 1.0}, load_bank(url))


def test_a_flipped_byte_in_the_manifest_or_latest_is_detected(url):
    publish(url, directions(), model_fingerprint=FINGERPRINT)
    fs, root = fs_path(url)
    path = f"{root}/versions/v0001/manifest.json"
    good = fs.cat_file(path)
    at = good.index(b"memory://corpus") + len("memory://corpu")  # corpus -> corpur: still valid JSON
    flip_byte(url, "versions/v0001/manifest.json", at=at)
    for load in (lambda: load_bank(url), lambda: load_bank(url, "v0001")):
        with pytest.raises(HSpaceError, match=r"manifest.json is damaged \(its content does not match"):
            load()
    fs.pipe_file(path, good[:-5])  # truncated: not JSON
    with pytest.raises(HSpaceError, match=r"manifest.json is damaged \(not valid JSON"):
        load_bank(url)
    fs.pipe_file(path, good)
    fs.pipe_file(f"{root}/latest", b'{"version": "v0001"')
    with pytest.raises(HSpaceError, match="the latest pointer is damaged"):
        load_bank(url)
    assert load_bank(url, "v0001").verify() == ["a", "b"]
    # The next publish rewrites a damaged pointer.
    assert publish(url, directions(seed=3), model_fingerprint=FINGERPRINT) == "v0002"
    assert load_bank(url).version == "v0002"


def test_a_manifest_moved_to_another_version_is_refused(url):
    publish(url, directions(), model_fingerprint=FINGERPRINT)
    fs, root = fs_path(url)
    fs.makedirs(f"{root}/versions/v0002", exist_ok=True)
    fs.pipe_file(f"{root}/versions/v0002/manifest.json", fs.cat_file(f"{root}/versions/v0001/manifest.json"))
    with pytest.raises(HSpaceError, match="manifest.json names version 'v0001'; the bank was changed by hand"):
        load_bank(url, "v0002")


def test_no_bank_and_no_latest_are_explained(url):
    with pytest.raises(HSpaceError, match="no direction bank at"):
        load_bank(url)
    publish(url, directions(), model_fingerprint=FINGERPRINT)
    fs, root = fs_path(url)
    fs.rm(f"{root}/latest")
    with pytest.raises(HSpaceError, match=r"has versions \['v0001'\] but no latest pointer"):
        load_bank(url)


# ----- names ---------------------------------------------------------------------------------------
BAD_NAMES = ["../x", "a/b", "", ".hidden", "..", "a..b", "x" * 65, "a\\b", "/abs", "-dash", "sp ace", None]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_would_escape_the_bank_are_rejected(tmp_path, name):
    url = str(tmp_path / "bank")
    with pytest.raises(HSpaceError, match="invalid direction name"):
        dataclasses.replace(directions()[0], name=name)
    if name is not None:  # version=None is the default naming
        with pytest.raises(HSpaceError, match="invalid version name"):
            publish(url, directions(), model_fingerprint=FINGERPRINT, version=name)
        with pytest.raises(HSpaceError, match="invalid version name"):
            load_bank(url, name)
    assert list(tmp_path.iterdir()) == []  # nothing written, inside or outside the bank


def test_good_names_and_reserved_versions():
    for name in ("smile", "yaw_2", "Glasses-v1.2", "0", "x" * 64):
        assert check_name(name) == name and check_name(name, "version") == name
    with pytest.raises(HSpaceError, match="reserved"):
        check_name("latest", "version")


def test_a_tampered_latest_pointer_cannot_escape(tmp_path):
    url = str(tmp_path / "bank")
    publish(url, directions(), model_fingerprint=FINGERPRINT)
    (tmp_path / "bank" / "latest").write_text(json.dumps({"version": "../../x", "manifest_sha256": "0"}))
    with pytest.raises(HSpaceError, match=r"latest pointer is damaged \(invalid version name '../../x'"):
        load_bank(url)


# ----- edit ----------------------------------------------------------------------------------------
@pytest.fixture
def tiny_bank(tiny, tmp_path):  # local only: memory:// is covered above, and sampling is the slow part
    url = str(tmp_path / "bank")
    made = {d.name: d for d in directions(tiny.h_shape, fingerprint=tiny.fingerprint)}
    timesteps = sample(tiny, [0], steps=T, capture=False).timesteps
    publish(url, made.values(), model_fingerprint=tiny.fingerprint, eta=1.0, timesteps=timesteps)
    return load_bank(url), made


def test_edit_equals_the_sampler_with_the_explicit_delta(tiny, tiny_bank):
    bank, made = tiny_bank
    v, w, seeds = made["a"].tensor, made["b"].tensor, [0, 1]
    edited = edit(tiny, seeds, {"a": 2.0}, bank)
    assert edited.dtype == np.uint8 and edited.shape == (2, 3, 16, 16)
    assert np.array_equal(edited, to_uint8(sample(tiny, seeds, steps=T, eta=1.0, delta=2.0 * v).images).numpy())
    plain = to_uint8(sample(tiny, seeds, steps=T, eta=1.0).images).numpy()
    assert np.array_equal(edit(tiny, seeds, {}, bank), plain)
    assert not np.array_equal(edited, plain)  # the edit does something, so the equality above can fail
    # Directions add (Sec. V): delta = 2 v - w, the same as hspace.hook.compose_delta([(v, 2), (w, -1)]).
    both = edit(tiny, seeds, {"a": 2.0, "b": -1.0}, bank)
    assert np.array_equal(both, to_uint8(sample(tiny, seeds, steps=T, eta=1.0, delta=2.0 * v - w).images).numpy())
    assert not np.array_equal(both, edited)
    assert np.array_equal(
        edit(tiny, 1, {"a": 2.0}, bank, asyrp=True),
        to_uint8(sample(tiny, [1], steps=T, delta=2.0 * v, asyrp=True).images).numpy(),
    )


def test_edit_uses_the_recorded_eta(tiny, tmp_path):
    url = str(tmp_path / "bank")
    made = directions(tiny.h_shape, fingerprint=tiny.fingerprint)
    publish(url, made, model_fingerprint=tiny.fingerprint, eta=0.0)
    bank, delta = load_bank(url), 1.5 * made[0].tensor
    ddim = to_uint8(sample(tiny, [3], steps=T, eta=0.0, delta=delta).images).numpy()
    assert np.array_equal(edit(tiny, [3], {"a": 1.5}, bank), ddim)
    assert not np.array_equal(edit(tiny, [3], {"a": 1.5}, bank, eta=1.0), ddim)


def test_edit_refuses_another_model_steps_or_name(tiny, tiny_bank):
    bank, _ = tiny_bank
    other = dataclasses.replace(tiny, fingerprint="0" * 64)
    with pytest.raises(HSpaceError, match="built for the model with weight fingerprint .* but 'tiny' has 000000000000"):
        edit(other, [0], {"a": 1.0}, bank)
    with pytest.raises(HSpaceError, match="built for the model with weight fingerprint"):
        load_bank(bank.url, fingerprint="0" * 64)
    assert load_bank(bank.url, fingerprint=tiny.fingerprint).version == "v0001"
    with pytest.raises(HSpaceError, match="T = 3 steps, so they are applied with steps=3, not 5"):
        edit(tiny, [0], {"a": 1.0}, bank, steps=5)
    with pytest.raises(HSpaceError, match="has no direction 'smile'; it has a, b"):
        edit(tiny, [0], {"smile": 1.0}, bank)
    with pytest.raises(HSpaceError, match="gammas must be numbers"):
        edit(tiny, [0], {"a": "4"}, bank)


def test_edit_refuses_other_timesteps(tiny, tmp_path):
    url = str(tmp_path / "bank")
    made = directions(tiny.h_shape, fingerprint=tiny.fingerprint)
    publish(url, made, model_fingerprint=tiny.fingerprint, timesteps=[999, 500, 1])
    with pytest.raises(HSpaceError, match="was built with timesteps"):
        edit(tiny, [0], {"a": 1.0}, load_bank(url))


# ----- export --------------------------------------------------------------------------------------
def test_export_to_a_file_and_to_a_bank(url, tmp_path):
    made = directions()
    publish(url, made, model_fingerprint=FINGERPRINT, eta=[1.0, 0.5, 0.0], notes="n")
    bank = load_bank(url)
    paths = bank.export(str(tmp_path / "out" / "bank.safetensors"))
    assert paths == [str(tmp_path / "out" / "bank.safetensors"), str(tmp_path / "out" / "bank.json")]
    tensors = safetensors.torch.load_file(paths[0])
    assert set(tensors) == {"a", "b"} and all(torch.equal(tensors[d.name], d.tensor) for d in made)
    assert json.loads((tmp_path / "out" / "bank.json").read_text()) == json.loads(json.dumps(bank._manifest))
    copy = str(tmp_path / "copy")
    bank.export(copy)
    copied = load_bank(copy)
    assert (copied.version, copied.eta, copied.notes) == ("v0001", (1.0, 0.5, 0.0), "n")
    assert copied.info()["content_sha256"] == bank.info()["content_sha256"]
    assert copied.verify() == ["a", "b"]


# ----- the CLI -------------------------------------------------------------------------------------
def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("hspace: error: ") and "\n" not in err, err
    return err


def write_inputs(tmp_path, made, **meta):
    tensors, sidecar = tmp_path / "in.safetensors", tmp_path / "in.json"
    safetensors.torch.save_file({d.name: d.tensor for d in made}, tensors)
    sidecar.write_text(
        json.dumps(
            {
                "model_fingerprint": FINGERPRINT,
                "sampler": {"eta": 1.0},
                "directions": {
                    d.name: {
                        "method": d.method,
                        "parameters": d.parameters,
                        "source": d.source,
                        "evaluation": d.evaluation,
                    }
                    for d in made
                },
                **meta,
            }
        )
    )
    return tensors, sidecar


def test_cli_publish_list_show_export_verify(cli, capsys, tmp_path):
    import flows.cli

    assert "flows.cli_bank" in flows.cli.COMMAND_MODULES
    url = str(tmp_path / "bank")
    made = directions()
    tensors, sidecar = write_inputs(tmp_path, made, notes="from a script")
    assert cli("bank", "publish", url, "--from", tensors, "--meta", sidecar, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"url": url, "version": "v0001"}
    assert cli("bank", "publish", url, "--from", tensors, "--meta", sidecar, "--version", "named") == 0
    assert "version named" in capsys.readouterr().out
    assert list_versions(url) == ["v0001", "named"]
    assert torch.equal(load_bank(url, "v0001").tensor("b"), made[1].tensor)
    assert load_bank(url, "v0001").info()["directions"]["a"]["evaluation"] == made[0].evaluation

    assert cli("bank", "list", url) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("v0001") and lines[1].startswith("named")
    assert lines[1].endswith("(latest)") and "(latest)" not in lines[0] and "2 directions" in lines[0]
    assert cli("bank", "list", url, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["latest"] == "named" and [v["latest"] for v in listed["versions"]] == [False, True]

    assert cli("bank", "show", url, "--version", "v0001", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    per_step = made[0].tensor.flatten(1).norm(dim=1)
    assert shown["directions"]["a"]["norm"] == pytest.approx(float(made[0].tensor.norm()), rel=1e-6)
    assert shown["directions"]["a"]["step_norm_max"] == pytest.approx(float(per_step.max()), rel=1e-6)
    assert shown["notes"] == "from a script" and shown["directions"]["b"]["method"] == "supervised"
    assert cli("bank", "show", url) == 0
    text = capsys.readouterr().out
    assert "version named" in text and "auc=0.85" in text and "effect.gamma_2=-0.5" in text

    out = tmp_path / "export" / "all.safetensors"
    assert cli("bank", "export", url, "--version", "v0001", "--out", out) == 0
    assert capsys.readouterr().out.split() == [str(out), str(out.with_suffix(".json"))]
    # The exported pair is what publish reads: publishing it elsewhere gives the same content.
    other = str(tmp_path / "other")
    assert cli("bank", "publish", other, "--from", out, "--meta", out.with_suffix(".json"), "--version", "v0001") == 0
    assert capsys.readouterr().out.strip() == f"published {other} version v0001"
    assert load_bank(other).info()["content_sha256"] == load_bank(url, "v0001").info()["content_sha256"]

    # An exported pair changed after export is refused: a flipped tensor byte, or edited metadata.
    sidecar_out = out.with_suffix(".json")
    exported = json.loads(sidecar_out.read_text())
    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(out.read_bytes())
    data[-1] ^= 0x01
    flipped.write_bytes(bytes(data))
    assert cli("bank", "publish", str(tmp_path / "third"), "--from", flipped, "--meta", sidecar_out) == 1
    assert "do not match its content_sha256" in one_error_line(capsys)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**exported, "model_fingerprint": "e" * 64}))
    assert cli("bank", "publish", str(tmp_path / "third"), "--from", out, "--meta", edited) == 1
    assert "does not match its manifest_sha256" in one_error_line(capsys)
    assert not (tmp_path / "third").exists()
    # Edited on purpose: without the seals it publishes.
    unsealed = {k: v for k, v in exported.items() if k not in ("manifest_sha256", "content_sha256")}
    edited.write_text(json.dumps({**unsealed, "notes": "edited"}))
    assert cli("bank", "publish", str(tmp_path / "third"), "--from", out, "--meta", edited) == 0
    assert load_bank(str(tmp_path / "third")).notes == "edited"
    capsys.readouterr()

    assert cli("bank", "verify", url, "--all", "--json") == 0
    assert json.loads(capsys.readouterr().out)["verified"] == {"v0001": ["a", "b"], "named": ["a", "b"]}
    # verify --all checks the latest pointer too, and list still shows the versions when it is damaged.
    pointer = (tmp_path / "bank" / "latest").read_bytes()
    (tmp_path / "bank" / "latest").write_text("garbage")
    assert cli("bank", "verify", url, "--all") == 1
    assert "the latest pointer is damaged" in one_error_line(capsys)
    assert cli("bank", "list", url) == 0
    listed = capsys.readouterr().out
    assert "latest pointer DAMAGED" in listed and "v0001" in listed and "named" in listed
    (tmp_path / "bank" / "latest").write_bytes(pointer)
    flip_byte(url, "versions/named/a.safetensors")
    assert cli("bank", "verify", url, "--version", "v0001") == 0
    assert capsys.readouterr().out.strip() == "v0001: 2 directions verified"
    assert cli("bank", "verify", url) == 1
    assert "a.safetensors is damaged" in one_error_line(capsys)
    assert cli("bank", "list", url) == 0  # a damaged tensor does not hide the version


def test_cli_bad_input_exits_1_with_one_line(cli, capsys, tmp_path):
    url = str(tmp_path / "bank")
    made = directions()
    tensors, sidecar = write_inputs(tmp_path, made)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    missing_one = tmp_path / "one.json"
    missing_one.write_text(
        json.dumps({"model_fingerprint": FINGERPRINT, "directions": {"a": {"method": "supervised"}}})
    )
    escaping = tmp_path / "escape.safetensors"
    safetensors.torch.save_file({"../x": made[0].tensor}, escaping)
    escaping_meta = tmp_path / "escape.json"
    escaping_meta.write_text(
        json.dumps({"model_fingerprint": FINGERPRINT, "directions": {"../x": {"method": "supervised"}}})
    )
    not_tensors = tmp_path / "text.safetensors"
    not_tensors.write_text("hello")
    for argv, message in [
        (("list", url), "no direction bank at"),
        (("show", url), "no direction bank at"),
        (("verify", url), "no direction bank at"),
        (("verify", url, "--all"), "no direction bank at"),
        (("publish", url, "--from", tmp_path / "nope.safetensors", "--meta", sidecar), "no such file"),
        (("publish", url, "--from", tensors, "--meta", broken), "is not valid JSON"),
        (("publish", url, "--from", not_tensors, "--meta", sidecar), "is not a safetensors file"),
        (("publish", url, "--from", tensors, "--meta", missing_one), "must name exactly the tensors"),
        (("publish", url, "--from", escaping, "--meta", escaping_meta), "invalid direction name '../x'"),
        (("publish", url, "--from", tensors, "--meta", sidecar, "--version", "../v"), "invalid version name"),
    ]:
        assert cli("bank", *argv) == 1, argv
        assert message in one_error_line(capsys), argv
    assert not (tmp_path / "bank").exists()
    assert cli("bank", "publish", url, "--from", tensors, "--meta", sidecar) == 0
    capsys.readouterr()
    for argv, message in [
        (("show", url, "--version", "../x"), "invalid version name"),
        (("show", url, "--version", "v0002"), "has no version 'v0002'; it has v0001"),
        (("export", url, "--out", tmp_path / "x.safetensors", "--version", "nope"), "has no version 'nope'"),
    ]:
        assert cli("bank", *argv) == 1, argv
        assert message in one_error_line(capsys), argv


def test_the_bank_imports_only_the_core_and_its_file_libraries():
    """Layers: hspace/ never imports Prefect, Zarr, Dask, storage/, tasks/ or flows/ (read from the source)."""
    import ast
    import inspect

    imported = set()
    for source in (*Path(bank_module.__file__).parent.glob("*.py"), inspect.getsourcefile(edit)):
        tree = ast.parse(Path(source).read_text())
        imported |= {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
    assert imported & {"prefect", "zarr", "dask", "storage", "tasks", "flows", "pickle"} == set()
    assert imported - {
        "__future__",
        "hashlib",
        "json",
        "os",
        "re",
        "uuid",
        "collections",
        "dataclasses",
        "datetime",
        "typing",
    } == {"fsspec", "numpy", "safetensors", "torch", "hspace"}

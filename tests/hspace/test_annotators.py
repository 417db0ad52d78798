"""Built-in annotators besides the testbed one: clip, faces, user classifiers, and load_annotator.

Oracles: hand computations (prompt-pair probabilities, landmark geometry), open_clip's own PIL transform
and its model called directly, a user module called directly. Nothing reaches a model hub: CLIP runs a tiny
random-weight config written to tmp, through the real loading code (local folder and checkpoint file).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hspace.annotators import ANNOTATORS, load_annotator
from hspace.errors import HSpaceError
from hspace.names import check_name
from hspace.testbed.faces import render_dataset

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TINY_MEAN, TINY_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads per process slow MTCNN down several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def assert_path_safe(annotator) -> None:
    check_name(annotator.name, "annotator")
    for attribute in annotator.attributes:
        check_name(attribute, "attribute")


# ------------------------------------------------------------------------------------------------- clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random-weight tiny CLIP saved as an open_clip local folder: (folder, the in-memory model)."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": TINY_MEAN, "std": TINY_STD}})
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder, model


def test_pair_probabilities_match_hand_computation():
    from hspace.annotators.clip import pair_probabilities

    rng = np.random.default_rng(0)
    image, positive, negative = rng.normal(size=(4, 6)), rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    scale = 7.5
    logits_pos = scale * _unit(image) @ _unit(positive).T
    logits_neg = scale * _unit(image) @ _unit(negative).T
    expected = np.exp(logits_pos) / (np.exp(logits_pos) + np.exp(logits_neg))  # softmax over each pair
    got = pair_probabilities(torch.tensor(image), torch.tensor(positive), torch.tensor(negative), scale)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # Swapping the prompts of a pair gives 1 - p.
    swapped = pair_probabilities(torch.tensor(image), torch.tensor(negative), torch.tensor(positive), scale)
    np.testing.assert_allclose(swapped.numpy(), 1 - expected, atol=1e-6)


@pytest.mark.parametrize(
    "size, mode, crop",
    [
        (32, "shortest", None),
        (64, "shortest", None),
        (64, "shortest", (8, 56)),
        (64, "squash", (8, 56)),
        (64, "longest", (8, 56)),
    ],
)
def test_preprocess_matches_open_clip_pil_transform(size, mode, crop):
    import open_clip

    from hspace.annotators.clip import Preprocessing, preprocess

    images = render_dataset(3, seed=1, size=size)[0]
    if crop:  # non-square inputs exercise the crop / pad rules
        images = np.ascontiguousarray(images[..., crop[0] : crop[1]])
    cfg = {"size": 48, "mean": TINY_MEAN, "std": TINY_STD, "interpolation": "bicubic", "resize_mode": mode}
    reference = open_clip.image_transform(48, is_train=False, mean=TINY_MEAN, std=TINY_STD, resize_mode=mode)
    expected = torch.stack([reference(Image.fromarray(im.transpose(1, 2, 0))) for im in images])
    got = preprocess(images, Preprocessing.parse(cfg))
    assert got.shape == expected.shape == (3, 3, 48, 48)
    difference = (got - expected).abs()
    # PIL rounds to uint8 between its two resize passes; torch does not: tiny differences at edges.
    assert float(difference.mean()) < 0.01, float(difference.mean())
    assert float(difference.max()) < 0.2, float(difference.max())


def _manual_clip_scores(model, images, prompts):
    """Scores computed the long way: open_clip's PIL transform and tokenizer, the model, numpy math."""
    import open_clip

    transform = open_clip.image_transform(32, is_train=False, mean=TINY_MEAN, std=TINY_STD)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        x = torch.stack([transform(Image.fromarray(im.transpose(1, 2, 0))) for im in images])
        f = model.encode_image(x).numpy().astype(np.float64)
        pos = model.encode_text(tokenizer([p for p, _ in prompts.values()])).numpy().astype(np.float64)
        neg = model.encode_text(tokenizer([n for _, n in prompts.values()])).numpy().astype(np.float64)
        scale = float(model.logit_scale.exp())
    a, b = scale * _unit(f) @ _unit(pos).T, scale * _unit(f) @ _unit(neg).T
    return np.exp(a) / (np.exp(a) + np.exp(b))


def test_tiny_clip_from_local_folder_matches_manual_computation(tiny_clip):
    from hspace.annotators.clip import DEFAULT_PROMPTS

    folder, model = tiny_clip
    annotator = load_annotator("clip", model=f"local-dir:{folder}")
    assert annotator.name == "clip" and annotator.attributes == ("smile", "glasses", "hat", "gender", "age")
    assert_path_safe(annotator)
    images = render_dataset(6, seed=0)[0]  # 32x32: the tiny model's size, so no resizing on either path
    scores = annotator.score(images)
    assert scores.dtype == np.float32 and scores.shape == (6, 5)
    expected = _manual_clip_scores(model, images, DEFAULT_PROMPTS)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    assert scores.std(axis=0).min() > 1e-4  # the scores depend on the image
    # Larger inputs are resized with the model's preprocessing (PIL vs torch rounding: loose tolerance).
    large = render_dataset(3, seed=0, size=64)[0]
    np.testing.assert_allclose(annotator.score(large), _manual_clip_scores(model, large, DEFAULT_PROMPTS), atol=0.02)
    weights = (folder / "open_clip_model.safetensors").read_bytes()
    assert annotator.config["sha256"] == {"open_clip_model.safetensors": hashlib.sha256(weights).hexdigest()}


def test_tiny_clip_from_registered_config_and_checkpoint_file(tiny_clip, tmp_path):
    import open_clip

    folder, model = tiny_clip
    (tmp_path / "hspace-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "hspace-test-tiny-clip.json")
    prompts = {"smile": ["A smiling face", "A face"], "beard": ["A man with a beard", "A man"]}
    checkpoint = folder / "open_clip_model.safetensors"
    annotator = load_annotator(
        "clip", model="hspace-test-tiny-clip", pretrained=str(checkpoint), prompts=prompts, name="clip-tiny", batch=2
    )
    assert annotator.name == "clip-tiny" and annotator.attributes == ("smile", "beard")
    images = render_dataset(5, seed=2)[0]
    # Registered configs default to OpenAI's mean/std: compare with the model called on that preprocessing.
    from hspace.annotators.clip import pair_probabilities, preprocess

    assert annotator.preprocessing.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        f = model.encode_image(preprocess(images, annotator.preprocessing))
        pos = model.encode_text(tokenizer([p for p, _ in prompts.values()]))
        neg = model.encode_text(tokenizer([n for _, n in prompts.values()]))
        expected = pair_probabilities(f, pos, neg, float(model.logit_scale.exp())).numpy()
    np.testing.assert_allclose(annotator.score(images), expected, rtol=1e-4, atol=1e-5)
    assert annotator.config["sha256"] and annotator.config["prompts"]["beard"] == ["A man with a beard", "A man"]


def test_clip_weights_missing_or_unknown_say_what_to_do(monkeypatch, tmp_path):
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("no route to the hub (test)")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", offline)
    with pytest.raises(HSpaceError, match=r"pretrained=<path to a local checkpoint.*|HF_HOME") as error:
        load_annotator("clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert "create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')" in str(error.value)
    with pytest.raises(HSpaceError, match="neither a tag"):
        load_annotator("clip", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(HSpaceError, match="random weights"):
        load_annotator("clip", pretrained=None)
    with pytest.raises(HSpaceError, match="unknown CLIP model"):
        load_annotator("clip", model="ViT-Nonexistent-1")
    with pytest.raises(HSpaceError, match="open_clip_config.json"):
        load_annotator("clip", model=f"local-dir:{tmp_path}")


@pytest.mark.parametrize(
    "prompts",
    [
        {},
        {"smile": "A smiling person"},
        {"smile": ["A smiling person", ""]},
        {"../up": ["a", "b"]},
        {"smile": ["a", "b", "c"]},
    ],
)
def test_clip_refuses_bad_prompts(prompts):
    from hspace.annotators.clip import parse_prompts

    with pytest.raises(HSpaceError):
        parse_prompts(prompts)


# ------------------------------------------------------------------------------------------------ faces


def test_landmark_proxies_match_hand_computation():
    from hspace.annotators.faces import landmark_proxies

    # Frontal face: eyes 20 px apart, nose centred, mouth corners 16 px apart.
    frontal = np.array([[30, 40], [50, 40], [40, 52], [32, 62], [48, 62]], dtype=np.float64)
    turned = frontal.copy()
    turned[2, 0] += 5  # nose 5 px to the image's right: the head turned towards the viewer's right
    theta = np.radians(30)  # rotate the turned face 30 degrees clockwise on screen (y points down)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rolled = (turned - [40, 50]) @ rotation.T + [40, 50]
    nothing = np.full((5, 2), np.nan)
    same_eyes = frontal.copy()
    same_eyes[1] = same_eyes[0]
    got = landmark_proxies(np.stack([frontal, turned, rolled, nothing, same_eyes]))
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got[0], [0.0, 0.0, 16 / 20], atol=1e-6)
    np.testing.assert_allclose(got[1], [5 / 20, 0.0, 16 / 20], atol=1e-6)
    np.testing.assert_allclose(got[2], [5 / 20, 30.0, 16 / 20], atol=1e-5)  # yaw and width ignore roll
    assert np.isnan(got[3]).all() and np.isnan(got[4]).all()
    mirrored = turned.copy()
    mirrored[2, 0] = 35
    assert landmark_proxies(mirrored[None])[0, 0] == pytest.approx(-0.25)


@pytest.fixture(scope="module")
def faces():
    return load_annotator("faces")


def test_faces_blank_images_have_no_face(faces):
    from hspace.annotators.faces import ATTRIBUTES

    assert faces.name == "faces" and faces.attributes == ATTRIBUTES and len(ATTRIBUTES) == 18
    assert_path_safe(faces)
    blank = np.stack([np.zeros((3, 32, 32), np.uint8), np.full((3, 32, 32), 128, np.uint8)])
    scores = faces.score(blank)
    assert scores.dtype == np.float32 and scores.shape == (2, 18)
    assert (scores[:, 0] == 0).all() and np.isnan(scores[:, 1:]).all()
    assert faces.score(np.zeros((0, 3, 32, 32), np.uint8)).shape == (0, 18)
    with pytest.raises(HSpaceError, match="uint8"):
        faces.score(blank.astype(np.float32))


def test_faces_on_testbed_renders_are_consistent(faces):
    from hspace.annotators.faces import landmark_proxies, upsample

    images = render_dataset(8, seed=0)[0]
    x, scale = upsample(images, 160)
    assert x.shape == (8, 3, 160, 160) and scale == (5.0, 5.0)
    probability, box, landmarks = faces.detect(images)
    scores = faces.score(images)
    found = probability > 0
    np.testing.assert_array_equal(scores[:, 0], probability)
    assert (probability[found] > faces.thresholds[2]).all() and (probability <= 1).all()
    assert np.isnan(box[~found]).all() and np.isfinite(box[found]).all()
    np.testing.assert_allclose(scores[:, 15:], landmark_proxies(landmarks), equal_nan=True)
    np.testing.assert_array_equal(scores[:, 5:15], landmarks.reshape(-1, 10))
    # Landmarks are in input (32 px) coordinates and inside the image.
    inner = landmarks[found]
    assert ((inner > -1) & (inner < 33)).all()
    json.dumps(faces.config)


def test_faces_options_are_checked():
    with pytest.raises(HSpaceError, match="thresholds"):
        load_annotator("faces", thresholds=(0.6, 0.7))
    with pytest.raises(HSpaceError, match="min_side"):
        load_annotator("faces", min_side=0)


# ------------------------------------------------------------------------------------------ classifiers


class TinyClassifier(torch.nn.Module):
    """Conv + linear: 3 logits for 16x16 images."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


CLASSIFIER_CONFIG = {
    "attributes": ["Smiling", "Eyeglasses", "Male"],
    "input": {"size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]},
}


def _export_torchscript(path: Path, module: torch.nn.Module) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), str(path))


def _direct_logits(module, images, size, mean, std):
    """The module called by hand on hand-normalised input."""
    x = torch.from_numpy(images).float() / 255.0
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return module(x).numpy()


def test_torchscript_classifier_matches_the_module(tmp_path):
    torch.manual_seed(0)
    module = TinyClassifier().eval()
    _export_torchscript(tmp_path / "celeba-tiny.ts", module)
    (tmp_path / "celeba-tiny.json").write_text(json.dumps(CLASSIFIER_CONFIG))
    images = render_dataset(5, seed=3, size=16)[0]
    logits = _direct_logits(module, images, 16, [0.5] * 3, [0.25, 0.5, 1.0])

    annotator = load_annotator(f"classifier:{tmp_path / 'celeba-tiny.ts'}")
    assert annotator.name == "celeba-tiny" and annotator.attributes == ("Smiling", "Eyeglasses", "Male")
    assert_path_safe(annotator)
    np.testing.assert_allclose(annotator.score(images), 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)

    # A bare path ending in .ts works too; select reorders and subsets, output="logit" gives raw logits.
    raw = load_annotator(str(tmp_path / "celeba-tiny.ts"), select=["Male", "Smiling"], output="logit", name="celeba")
    assert raw.name == "celeba" and raw.attributes == ("Male", "Smiling")
    np.testing.assert_allclose(raw.score(images), logits[:, [2, 0]], rtol=1e-5, atol=1e-6)
    # Other sizes are resized (antialiased bilinear) to the config's.
    large = render_dataset(2, seed=3, size=32)[0]
    expected = _direct_logits(module, large, 16, [0.5] * 3, [0.25, 0.5, 1.0])[:, [2, 0]]
    np.testing.assert_allclose(raw.score(large), expected, rtol=1e-5, atol=1e-5)
    assert raw.config["format"] == "torchscript" and len(raw.config["sha256"]) == 64

    # A TorchScript archive named .pt is TorchScript, not a pickle: accepted.
    _export_torchscript(tmp_path / "scripted.pt", module)
    named_pt = load_annotator(str(tmp_path / "scripted.pt"), config=CLASSIFIER_CONFIG)
    np.testing.assert_allclose(named_pt.score(images), annotator.score(images))


def test_pickles_are_refused(tmp_path):
    module = TinyClassifier()
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    torch.save(module, tmp_path / "model.pth")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (tmp_path / "fake.ts").write_bytes(pickle.dumps(module))  # a pickle under a TorchScript name
    for name in ("weights.pt", "model.pth", "model.pkl", "fake.ts"):
        with pytest.raises(HSpaceError, match="refused.*TorchScript.*safetensors"):
            load_annotator(str(tmp_path / name), config=CLASSIFIER_CONFIG)


class _Planted:
    """Pickles to a call of exec that would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_torchscript_loading_never_runs_planted_pickle_code(tmp_path):
    _export_torchscript(tmp_path / "clean.ts", TinyClassifier())
    marker = tmp_path / "code-ran"
    for target in ("data.pkl", "constants.pkl"):
        planted = tmp_path / f"planted-{target.split('.')[0]}.ts"
        with zipfile.ZipFile(tmp_path / "clean.ts") as clean, zipfile.ZipFile(planted, "w") as out:
            for entry in clean.namelist():
                data = clean.read(entry)
                out.writestr(
                    entry, pickle.dumps(_Planted(marker), protocol=2) if entry.endswith("/" + target) else data
                )
        with pytest.raises(HSpaceError, match="could not be loaded"):
            load_annotator(str(planted), config=CLASSIFIER_CONFIG)
        assert not marker.exists()
    # The oracle that the planted pickle is live: plain pickle.loads does run it.
    pickle.loads(pickle.dumps(_Planted(marker)))
    assert marker.exists()


def test_safetensors_classifier_matches_the_architecture(tmp_path):
    from safetensors.torch import save_file

    from hspace.annotators.classifier import SmallCNN, build_architecture

    torch.manual_seed(1)
    net = SmallCNN(3, widths=[4, 8]).eval()
    save_file(net.state_dict(), tmp_path / "small.safetensors")
    config = {**CLASSIFIER_CONFIG, "architecture": "small_cnn", "arguments": {"widths": [4, 8]}, "name": "small"}
    (tmp_path / "small.json").write_text(json.dumps(config))
    annotator = load_annotator(str(tmp_path / "small.safetensors"))
    assert annotator.name == "small"
    images = render_dataset(4, seed=4, size=16)[0]
    logits = _direct_logits(net, images, 16, [0.5] * 3, [0.25, 0.5, 1.0])
    np.testing.assert_allclose(annotator.score(images), 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)

    # Weights for 3 attributes under a config naming 4: refused, naming the mismatch.
    four = {**config, "attributes": ["Smiling", "Eyeglasses", "Male", "Young"]}
    with pytest.raises(HSpaceError, match="do not fit architecture 'small_cnn' with 4 attributes.*size mismatch"):
        load_annotator(str(tmp_path / "small.safetensors"), config=four)
    with pytest.raises(HSpaceError, match="do not fit"):
        load_annotator(str(tmp_path / "small.safetensors"), config={**config, "arguments": {"widths": [4, 16]}})
    resnet = build_architecture("resnet18", 40)
    assert resnet.state_dict()["fc.weight"].shape == (40, 512)


def test_classifier_config_errors_are_clear(tmp_path):
    _export_torchscript(tmp_path / "model.ts", TinyClassifier())
    path = str(tmp_path / "model.ts")
    with pytest.raises(HSpaceError, match="needs a JSON config"):
        load_annotator(path)
    with pytest.raises(HSpaceError, match=r"no attributes \['Bald'\]; it has: Smiling, Eyeglasses, Male"):
        load_annotator(path, config=CLASSIFIER_CONFIG, select=["Smiling", "Bald"])
    with pytest.raises(HSpaceError, match="returns \\(1, 3\\).*names 2 attributes"):
        load_annotator(path, config={**CLASSIFIER_CONFIG, "attributes": ["Smiling", "Male"]})
    with pytest.raises(HSpaceError, match="no default"):
        load_annotator(path, config={"attributes": ["Smiling", "Eyeglasses", "Male"], "input": {"size": 16}})
    with pytest.raises(HSpaceError, match="unknown keys"):
        load_annotator(path, config={**CLASSIFIER_CONFIG, "atributes": []})
    with pytest.raises(HSpaceError, match="attribute name"):
        load_annotator(path, config={**CLASSIFIER_CONFIG, "attributes": ["Smiling", "a/b", "Male"]})
    with pytest.raises(HSpaceError, match="more than once"):
        load_annotator(path, config={**CLASSIFIER_CONFIG, "attributes": ["Male", "Male", "Smiling"]})
    with pytest.raises(HSpaceError, match="carries its own architecture"):
        load_annotator(path, config={**CLASSIFIER_CONFIG, "architecture": "resnet18"})
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(HSpaceError, match="unknown architecture"):
        load_annotator(str(tmp_path / "x.safetensors"), config={**CLASSIFIER_CONFIG, "architecture": "vgg"})
    with pytest.raises(HSpaceError, match="unreadable"):
        load_annotator(str(tmp_path / "x.safetensors"), config={**CLASSIFIER_CONFIG, "architecture": "small_cnn"})
    with pytest.raises(HSpaceError, match="does not exist"):
        load_annotator(str(tmp_path / "absent.ts"))
    with pytest.raises(HSpaceError, match="output must be"):
        load_annotator(path, config=CLASSIFIER_CONFIG, output="softmax")


# -------------------------------------------------------------------------------------- load_annotator


def test_load_annotator_names_and_options():
    from hspace.testbed.annotator import TestbedAnnotator

    assert ANNOTATORS == ("testbed", "clip", "faces")
    testbed = load_annotator("testbed")
    assert isinstance(testbed, TestbedAnnotator) and testbed.name == "testbed"
    assert_path_safe(testbed)
    with pytest.raises(HSpaceError, match="unknown annotator 'celeba'; built in: testbed, clip, faces"):
        load_annotator("celeba")
    with pytest.raises(HSpaceError, match="does not take these options.*min_side"):
        load_annotator("faces", model="ViT-B-32")
    with pytest.raises(HSpaceError, match="invalid annotator name 'clip/x'"):
        load_annotator("clip", name="clip/x")


def test_class_thresholds_are_declared_by_the_annotator_without_loading_it(monkeypatch):
    from hspace.annotators import class_thresholds
    from hspace.testbed.annotator import TestbedAnnotator
    from hspace.testbed.faces import BINARY_FACTORS

    def refuse(*args, **kwargs):
        raise AssertionError("class_thresholds loaded weights")

    monkeypatch.setattr(TestbedAnnotator, "load", classmethod(refuse))
    assert class_thresholds("testbed") == {name: 0.5 for name in BINARY_FACTORS}
    assert class_thresholds("clip") == class_thresholds("faces") == class_thresholds("absent.ts") == {}
    with pytest.raises(HSpaceError, match="unknown annotator 'celeba'"):
        class_thresholds("celeba")


class _Blocked:
    """A meta path finder that makes importing some top-level packages fail."""

    def __init__(self, packages):
        self.packages = packages

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.packages:
            raise ImportError(f"{fullname} imported while blocked (test)")


def _block(monkeypatch, *packages):
    """Unload ``packages`` and the annotator modules for this test (restored afterwards); importing ``packages`` fails.

    The annotator modules are unloaded too, so that their module-level imports run again under the block.
    """
    ours = ("hspace.annotators.clip", "hspace.annotators.faces", "hspace.annotators.classifier")
    for module in [m for m in sys.modules if m.split(".")[0] in packages or m in ours]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_Blocked(packages), *sys.meta_path])


def test_each_annotator_imports_only_its_own_dependencies(tiny_clip, tmp_path, monkeypatch):
    folder, _ = tiny_clip
    _export_torchscript(tmp_path / "model.ts", TinyClassifier())
    with monkeypatch.context() as patch:
        _block(patch, "open_clip", "facenet_pytorch")
        load_annotator("testbed")
        load_annotator(str(tmp_path / "model.ts"), config=CLASSIFIER_CONFIG)
        with pytest.raises(ImportError, match="blocked"):  # the blocker works
            import open_clip  # noqa: F401
    with monkeypatch.context() as patch:
        _block(patch, "open_clip")
        load_annotator("faces")
    with monkeypatch.context() as patch:
        _block(patch, "facenet_pytorch")
        load_annotator("clip", model=f"local-dir:{folder}")

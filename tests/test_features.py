"""Feature extractors: pixels, a local TorchScript stand-in module, the digits classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit_lfm import features as feat

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the classifier trains fastest so when the tests share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StandIn(nn.Module):
    """A stand-in for an exported Inception/DINOv2/CLIP: per-channel mean and max."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def test_torchscript_stand_in(tmp_path):
    path = tmp_path / "stand_in.pt"
    torch.jit.script(StandIn()).save(str(path))
    ex = feat.get_extractor(f"torchscript:{path}")
    rgb = np.random.default_rng(0).uniform(size=(5, 3, 4, 4)).astype(np.float32)
    out = ex(rgb)
    assert out.shape == (5, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, :3], rgb.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(out[:, 3:], rgb.max(axis=(2, 3)), rtol=1e-6)
    # grayscale is repeated to the three channels such networks expect
    gray = rgb[:, 0]
    m, mx = gray.mean(axis=(1, 2))[:, None], gray.max(axis=(1, 2))[:, None]
    np.testing.assert_allclose(ex(gray), np.hstack([m, m, m, mx, mx, mx]), rtol=1e-6)


def test_torchscript_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(PrunekitError, match="not found"):
        feat.get_extractor(f"torchscript:{tmp_path / 'nope.pt'}")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a module")
    with pytest.raises(PrunekitError, match="cannot load"):
        feat.get_extractor(f"torchscript:{bad}")


def test_pixels_and_unknown_names():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 20
    np.testing.assert_allclose(feat.get_extractor("pixels")(x), x.reshape(2, 9), rtol=1e-6)
    with pytest.raises(PrunekitError, match="unknown feature extractor"):
        feat.get_extractor("inception")


def test_digits_split_is_disjoint_stratified_and_seeded():
    train, test = feat.digits_split(0)
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == 1797
    assert test.size == 360
    _, labels = feat.digits_images()
    assert np.bincount(labels[test]).min() >= 35  # every digit appears about 36 times
    np.testing.assert_array_equal(test, feat.digits_split(0)[1])
    assert not np.array_equal(test, feat.digits_split(1)[1])


def test_digits_classifier_accuracy_and_round_trip(tmp_path):
    clf = feat.digits_classifier(0)
    assert clf.test_accuracy > 0.9
    # recompute the held-out accuracy independently, from upsampled 16 x 16 RGB inputs (resized back to 8 x 8 inside)
    images, labels = feat.digits_images()
    _, test = feat.digits_split(0)
    big = torch.nn.functional.interpolate(torch.from_numpy(images[test][:, None]), size=(16, 16), mode="bilinear")
    with torch.no_grad():
        pred = clf.model(big.expand(-1, 3, -1, -1)).argmax(1).numpy()
    assert (pred == labels[test]).mean() > 0.9
    path = feat.save_digits_classifier(clf, tmp_path / "clf.pt")
    ex = feat.get_extractor(f"digits-classifier:{path}")
    assert "not Inception" in ex.description
    x = images[test[:7]]
    np.testing.assert_array_equal(ex(x), feat.get_extractor("digits-classifier")(x))
    assert ex(x).shape == (7, 64)


class Raises(nn.Module):
    """A TorchScript feature model whose code raises (user code runs when it is called)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            raise ValueError("broken feature model")
        return x


def test_a_torchscript_feature_model_that_raises_is_one_user_error(tmp_path):
    path = tmp_path / "raises.pt"
    torch.jit.script(Raises()).save(str(path))
    ex = feat.get_extractor(f"torchscript:{path}")
    with pytest.raises(PrunekitError) as info:
        ex(np.zeros((3, 3, 4, 4), np.float32))
    assert str(info.value) == (f"TorchScript feature model {path} failed on a batch of 3 images: "
                               "builtins.ValueError: broken feature model")


@pytest.mark.parametrize("version", ["2.5.1", "2.5.1+cu121", "1.13.0"])
def test_torch_load_is_refused_before_torch_2_6(tmp_path, monkeypatch, version):
    path = tmp_path / "clf.pt"
    path.write_bytes(b"never read")
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(PrunekitError, match=r"needs torch >= 2\.6 .*CVE-2025-32434"):
        feat.load_digits_classifier(path)


def test_torch_2_6_and_later_may_load(monkeypatch):
    from prunekit_lfm.guards import require_safe_torch_load

    for version in ("2.6.0", "2.13.0+cpu", "3.0.0a0"):
        monkeypatch.setattr(torch, "__version__", version)
        require_safe_torch_load("x")  # no error


def test_a_classifier_file_with_nan_weights_is_refused(tmp_path):
    clf = feat.DigitsClassifier(feat.DigitsCNN(), 0, 0.5, 1)
    with torch.no_grad():
        clf.model.head.bias[3] = float("nan")
    path = feat.save_digits_classifier(clf, tmp_path / "clf.pt")
    with pytest.raises(PrunekitError, match=r"NaN/inf weights in digits classifier file .*'head.bias'"):
        feat.load_digits_classifier(path)

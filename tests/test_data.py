"""Applying a selection to real PyTorch, Hugging Face datasets and WebDataset objects, and folders."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.selection.subset import Selection  # noqa: E402
from prunekit_lfm import data as D  # noqa: E402

NAMES = [f"img/{i:02d}.png" for i in range(10)]


def sel(counts=None, ids=True):
    """Keeps rows 1, 4, 7 of 10 (ids = file names), optionally oversampled."""
    idx = np.array([1, 4, 7])
    return Selection(indices=idx, n_total=10, pr=0.7, ids=np.array(NAMES, dtype=object)[idx] if ids else None,
                     counts=None if counts is None else np.array(counts))


def test_torch_subset_by_position_ids_and_counts(tmp_path):
    ds = torch.utils.data.TensorDataset(torch.arange(10) * 10)
    sub = D.torch_subset(ds, sel())
    assert [int(sub[i][0]) for i in range(len(sub))] == [10, 40, 70]
    rep = D.torch_subset(ds, sel(counts=[1, 3, 2]))
    assert [int(rep[i][0]) for i in range(len(rep))] == [10, 40, 40, 40, 70, 70]
    # By id into a data set stored in another order (and of another size).
    shuffled = list(reversed(NAMES)) + ["img/extra.png"]
    ds2 = torch.utils.data.TensorDataset(torch.arange(11))
    sub = D.torch_subset(ds2, sel(), ids=shuffled)
    assert sorted(sub.indices) == [2, 5, 8]
    # A saved selection file works the same.
    sel().save(tmp_path / "s.h5")
    assert D.torch_subset(ds, tmp_path / "s.h5").indices == [1, 4, 7]
    with pytest.raises(PrunekitError, match="lacks"):
        D.torch_subset(ds2, sel(), ids=[f"other{i}" for i in range(11)])
    with pytest.raises(PrunekitError, match="made for 10 rows"):
        D.torch_subset(ds2, sel(ids=False))


def test_torch_sampler_draws_only_kept_rows():
    plain = D.torch_sampler(sel(), seed=3)
    order = list(plain)
    assert sorted(order) == [1, 4, 7]
    assert list(D.torch_sampler(sel(), seed=3)) == order  # seeded
    weighted = D.torch_sampler(sel(counts=[1, 3, 2]), seed=0)
    assert len(list(weighted)) == 6 and set(weighted) <= {1, 4, 7}
    many = np.array(list(D.torch_sampler(sel(counts=[1, 3, 2]), num_samples=60000, seed=1)))
    freq = np.bincount(many, minlength=10) / many.size
    np.testing.assert_allclose(freq[[1, 4, 7]], [1 / 6, 3 / 6, 2 / 6], atol=0.01)
    assert freq[[0, 2, 3, 5, 6, 8, 9]].sum() == 0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(10)),
                                         sampler=D.torch_sampler(sel(), seed=0), batch_size=2)
    assert sorted(int(v) for batch in loader for v in batch[0]) == [1, 4, 7]


def test_hf_datasets_select():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"file": NAMES, "value": list(range(10))})
    assert D.hf_select(ds, sel())["value"] == [1, 4, 7]
    assert D.hf_select(ds, sel(counts=[2, 1, 1]))["value"] == [1, 1, 4, 7]
    other = ds.select(list(range(9, -1, -1)))  # the same rows, stored in reverse
    picked = D.hf_select(other, sel(), id_column="file")
    assert picked["value"] == [1, 4, 7] and picked["file"] == [NAMES[1], NAMES[4], NAMES[7]]
    with pytest.raises(PrunekitError, match="no column 'path'"):
        D.hf_select(ds, sel(), id_column="path")


def test_webdataset_stage_filters_keys(tmp_path):
    wds = pytest.importorskip("webdataset")
    keys = [f"k{i:03d}" for i in range(10)]
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"s-{shard}.tar")) as sink:
            for i in range(shard * 5, shard * 5 + 5):
                sink.write({"__key__": keys[i], "txt": str(i)})
    s = Selection(indices=np.array([0, 6, 9]), n_total=10, pr=0.7,
                  ids=np.array([keys[0], keys[6], keys[9]], dtype=object), counts=np.array([1, 2, 1]))
    urls = [str(tmp_path / "s-0.tar"), str(tmp_path / "s-1.tar")]
    pipe = wds.WebDataset(urls, shardshuffle=False).compose(D.webdataset_stage(s))
    assert [x["__key__"] for x in pipe] == ["k000", "k006", "k006", "k009"]
    assert [x["txt"] for x in pipe] == [b"0", b"6", b"6", b"9"]
    with pytest.raises(PrunekitError, match="string ids"):
        D.webdataset_stage(sel(ids=False))


def test_index_webdataset_and_errors(tmp_path):
    wds = pytest.importorskip("webdataset")
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "x/one", "jpg": b"\xff\xd8fake", "cls": "3"})
        sink.write({"__key__": "x/two", "png": b"\x89PNGfake", "cls": "1"})
    idx = D.index_webdataset(tmp_path / "a.tar", labels=True)
    assert idx.keys.tolist() == ["x/one", "x/two"] and idx.labels.tolist() == [3, 1]
    assert idx.read_bytes(0, 2) == [b"\xff\xd8fake", b"\x89PNGfake"]
    with wds.TarWriter(str(tmp_path / "b.tar")) as sink:
        sink.write({"__key__": "x/one", "png": b"dup"})
    with pytest.raises(PrunekitError, match="repeat across shards"):
        D.index_webdataset(str(tmp_path / "*.tar"))
    with wds.TarWriter(str(tmp_path / "c.tar")) as sink:
        sink.write({"__key__": "y", "txt": "no image"})
    with pytest.raises(PrunekitError, match="has no image member"):
        D.index_webdataset(tmp_path / "c.tar")
    with pytest.raises(PrunekitError, match="has no 'cls' member"):
        D.index_webdataset(tmp_path / "b.tar", labels=True)
    with pytest.raises(PrunekitError, match="not found"):
        D.index_webdataset(str(tmp_path / "d-{0..1}.tar"))


def test_selected_files(tmp_path):
    for name in NAMES:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    files = D.selected_files(sel(counts=[1, 1, 2]), tmp_path)
    assert files == [tmp_path / NAMES[1], tmp_path / NAMES[4], tmp_path / NAMES[7], tmp_path / NAMES[7]]
    (tmp_path / NAMES[4]).unlink()
    with pytest.raises(PrunekitError, match="1 selected files are not in"):
        D.selected_files(sel(), tmp_path)
    with pytest.raises(PrunekitError, match="file-name ids"):
        D.selected_files(sel(ids=False), tmp_path)


# ----------------------------------------------------------------------------- ids stay inside the root


def _id_selection(ids):
    return Selection(indices=np.arange(len(ids)), n_total=len(ids), pr=0.0,
                     ids=np.array(ids, dtype=object))


@pytest.mark.parametrize("bad, needle", [
    ("/etc/passwd", "absolute path"),
    ("img/../../x.png", "climbs out"),
    ("../x.png", "climbs out"),
    ("link/passwd", "leads outside"),  # a folder symlink inside the root pointing out of it
    ("out.png", "leads outside"),  # a file symlink pointing out of the root
])
def test_selected_files_refuse_ids_that_leave_the_folder(tmp_path, bad, needle):
    root, outside = tmp_path / "root", tmp_path / "secret"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_text("secret")
    (outside / "x.png").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "out.png").symlink_to(outside / "x.png")
    (root / "img" / "a.png").write_bytes(b"a")
    with pytest.raises(PrunekitError, match=needle):
        D.selected_files(_id_selection(["img/a.png", bad]), root)


def test_selected_files_accept_nested_ids_and_symlinks_that_stay_inside(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.png").write_bytes(b"c")
    (tmp_path / "alias").symlink_to(tmp_path / "a", target_is_directory=True)
    files = D.selected_files(_id_selection(["a/b/c.png", "alias/b/c.png", "a/./b/c.png"]), tmp_path)
    assert files == [tmp_path / "a/b/c.png", tmp_path / "alias/b/c.png", tmp_path / "a/b/c.png"]


def test_contained_path_is_the_rule_for_every_join(tmp_path):
    from prunekit_lfm.guards import contained_path

    assert contained_path(tmp_path, "x/y.png") == tmp_path / "x" / "y.png"
    for name in ("", "/abs", "a/../../b", "a\x00b"):
        with pytest.raises(PrunekitError):
            contained_path(tmp_path, name)


def test_image_folders_with_a_symlink_out_of_the_folder_are_refused(tmp_path):
    """encode and embed read folders through the same rule (their ids are the relative names)."""
    from PIL import Image

    from prunekit_lfm.embed import open_inputs
    from prunekit_lfm.latents import open_images

    root, outside = tmp_path / "imgs", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    Image.new("RGB", (8, 8)).save(outside / "b.png")
    assert open_images(root, 8).n == 1
    (root / "b.png").symlink_to(outside / "b.png")
    for opener in (lambda: open_images(root, 8), lambda: open_inputs(root)):
        with pytest.raises(PrunekitError, match="'b.png' leads outside"):
            opener()


@pytest.mark.parametrize("key", ["../evil", "/abs/evil", "a/../../evil"])
def test_webdataset_keys_that_could_leave_a_folder_are_refused(tmp_path, key):
    import io
    import tarfile

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name in ("good.png", f"{key}.png"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x89PNG"))
    with pytest.raises(PrunekitError, match="absolute or contains '..'"):
        D.index_webdataset(tmp_path / "s.tar")

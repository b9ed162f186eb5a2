"""Image loaders: idx (gzipped or not) with clear errors on corrupt files, .npy arrays, folders,
the Fashion-MNIST and digits registrations and their query wordings; the small CNN image encoder."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from semid.data import image_io
from semid.data.image_files import load_image_collection, load_images
from semid.data.image_folders import load_image_folder
from semid.data.image_io import read_image, read_images, resize_square, stack_images
from semid.data.images import (
    FASHION_CLASSES,
    ImageDataset,
    article,
    class_queries,
    class_texts,
    describe_class,
    fashion_mnist_files,
    load_fashion_mnist,
    load_idx,
    load_image_arrays,
    read_idx,
)
from semid.errors import SemidError
from semid.image_encoder import ImageEncoder, ImageEncoderConfig, load_image_features


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of a uint8 array, as the format specifies (magic 0 0 0x08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_round_trip(tmp_path, images, gz):
    raw = idx_bytes(images)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert np.array_equal(read_idx(path), images)


def test_idx_with_labels(tmp_path, images):
    (tmp_path / "x").write_bytes(idx_bytes(images))
    (tmp_path / "y").write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 1, 0]))))
    ds = load_idx(tmp_path / "x", tmp_path / "y", ["a", "b", "c"], key_prefix="train/")
    assert ds.images.shape == (5, 4, 3) and ds.labels.tolist() == [0, 1, 2, 1, 0]
    assert ds.keys[0] == "train/0" and ds.texts()[2] == "a photo of a c"


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: raw[:-3], "corrupt idx file"),  # truncated data
        (lambda raw: b"\x08\x03" + raw[2:], "not an idx file"),  # bad magic
        (lambda raw: raw[:6], "truncated header"),
        (lambda raw: gzip.compress(raw)[:-10], "corrupt gzip"),  # truncated gzip stream
    ],
    ids=["short-data", "bad-magic", "short-header", "bad-gzip"],
)
def test_corrupt_idx_files_raise_clear_errors(tmp_path, images, corrupt, message):
    path = tmp_path / "bad"
    path.write_bytes(corrupt(idx_bytes(images)))
    with pytest.raises(SemidError, match=message):
        read_idx(path)


def test_idx_label_count_must_match(tmp_path, images):
    (tmp_path / "x").write_bytes(idx_bytes(images))
    (tmp_path / "y").write_bytes(idx_bytes(np.array([0, 1])))
    with pytest.raises(SemidError, match="2,"):
        load_idx(tmp_path / "x", tmp_path / "y")


def test_npy_images_with_label_names_and_captions(tmp_path, images):
    np.save(tmp_path / "x.npy", images.astype(np.float32) / 255)  # floats in [0, 1] are scaled
    (tmp_path / "y.txt").write_text("cat\ndog\ncat\nbird\ndog\n")
    (tmp_path / "c.txt").write_text("\n".join(f"caption {i}" for i in range(5)) + "\n")
    ds = load_image_arrays(tmp_path / "x.npy", tmp_path / "y.txt", tmp_path / "c.txt")
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.class_names == ["bird", "cat", "dog"] and ds.labels.tolist() == [1, 2, 1, 0, 2]
    assert ds.texts()[3] == "caption 3"


def test_npy_errors(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(SemidError, match="cannot read"):
        load_image_arrays(tmp_path / "bad.npy")
    np.save(tmp_path / "x.npy", np.zeros((3, 2, 2), np.uint8))
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    with pytest.raises(SemidError, match="4 labels for 3 images"):
        load_image_arrays(tmp_path / "x.npy", tmp_path / "y.npy")


def test_image_folder_with_pgm_and_npy(tmp_path):
    for cls, value in (("boot", 10), ("shirt", 200)):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.pgm").write_bytes(b"P5\n# comment\n3 2\n255\n" + bytes([value] * 6))
        np.save(tmp_path / cls / "b.npy", np.full((2, 3), value, np.uint8))
    (tmp_path / "captions.tsv").write_text(
        "boot/a.pgm\ta boot\nboot/b.npy\tanother boot\nshirt/a.pgm\ta shirt\nshirt/b.npy\tx\n"
    )
    ds = load_image_folder(tmp_path)
    assert ds.images.shape == (4, 2, 3) and ds.class_names == ["boot", "shirt"]
    assert ds.labels.tolist() == [0, 0, 1, 1] and int(ds.images[2, 0, 0]) == 200
    assert ds.captions[1] == "another boot"


def test_image_folder_rejects_mixed_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "1.npy", np.zeros((2, 2), np.uint8))
    np.save(tmp_path / "a" / "2.npy", np.zeros((3, 2), np.uint8))
    with pytest.raises(SemidError, match="differ in size"):
        load_image_folder(tmp_path)


def test_a_class_folder_named_only_by_separators_is_refused(tmp_path):
    """A folder `_/` became the class "" (its text "a photo of a ")."""
    for cls in ("boot", "_"):
        (tmp_path / cls).mkdir()
        np.save(tmp_path / cls / "b.npy", np.full((2, 3), 7, np.uint8))
    with pytest.raises(SemidError, match="class folder '_' in .* names no class"):
        load_image_collection(tmp_path)


def test_empty_class_folders_and_a_single_class_are_told(tmp_path, capsys):
    """An empty class folder was dropped without a word, and a collection of one class gave a
    perfect precision that says nothing."""
    for cls in ("boot", "shirt", "coat"):
        (tmp_path / cls).mkdir()
    for i in range(5):
        np.save(tmp_path / "boot" / f"{i}.npy", np.full((2, 3), i, np.uint8))
    load_image_collection(tmp_path)
    err = capsys.readouterr().err
    assert "2 class folders of" in err and "without images left out: 'coat', 'shirt'" in err
    assert "holds one class ('boot'): every image is relevant to every query" in err


def test_an_image_without_read_permission_is_told_to_be_made_readable(tmp_path, monkeypatch):
    """Root reads any file, so opening one is made to fail as it would for another user."""
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(image_io.Image, "open", refused)
    with pytest.raises(SemidError, match=r"Permission denied.*; make it readable \(chmod \+r\)"):
        read_image(path)


def test_dataset_validates_labels():
    with pytest.raises(SemidError, match="no class name"):
        ImageDataset(
            torch.zeros(2, 2, 2, dtype=torch.uint8), ["a", "b"], torch.tensor([0, 3]), ["x"]
        )


def test_query_wordings_are_held_out():
    train, train_labels = class_queries("train")
    test, test_labels = class_queries("test")
    assert not set(train) & set(test)
    for c in range(len(FASHION_CLASSES)):  # every class has several wordings in both splits
        assert (train_labels == c).sum() >= 5 and (test_labels == c).sum() >= 5
    with pytest.raises(SemidError, match="split"):
        class_queries("valid")


def test_missing_fashion_mnist_folder_names_the_install_command(tmp_path):
    with pytest.raises(SemidError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist_files(tmp_path / "nowhere")


def test_cnn_encoder_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 12, 12), dtype=torch.uint8)
    enc = ImageEncoder(ImageEncoderConfig(image_size=12, channels=(4, 8), dim=6))
    before = enc.encode(images)
    enc.fit(images, epochs=2, batch_size=16, progress=False)
    feats = enc.encode(images)
    assert feats.shape == (64, 6) and not torch.allclose(before, feats)
    enc.save_pretrained(tmp_path / "enc")
    assert torch.allclose(ImageEncoder.from_pretrained(tmp_path / "enc").encode(images), feats)
    with pytest.raises(SemidError, match="shape"):
        enc.encode(torch.zeros(2, 10, 10, dtype=torch.uint8))


def test_cnn_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    # two kinds of images (bright top half / bright bottom half): a working autoencoder gets them
    images = torch.zeros(128, 8, 8, dtype=torch.uint8)
    images[::2, :4], images[1::2, 4:] = 255, 255
    enc = ImageEncoder(ImageEncoderConfig(image_size=8, channels=(4,), dim=4))

    def error() -> float:
        x = images[:, None].float() / 255
        return float((enc.reconstruct(enc(x)).sigmoid() - x).abs().mean())

    with torch.no_grad():
        start = error()
    enc.fit(images, epochs=15, batch_size=32, lr=1e-2, progress=False)
    with torch.no_grad():
        assert error() < 0.5 * start


def test_min_steps_sets_the_budget_of_a_small_collection(monkeypatch):
    images = torch.randint(0, 256, (40, 8, 8), dtype=torch.uint8)
    enc = ImageEncoder(ImageEncoderConfig(image_size=8, channels=(4,), dim=4))
    steps = []
    real = torch.optim.AdamW.step
    monkeypatch.setattr(
        torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real(self, *a, **k)
    )
    enc.fit(images, epochs=1, batch_size=16, progress=False)  # 3 batches of 40 images
    assert len(steps) == 3
    enc.fit(images, epochs=1, batch_size=16, progress=False, min_steps=10)  # not a whole epoch more
    assert len(steps) == 3 + 10


def test_precomputed_features(tmp_path):
    np.save(tmp_path / "f.npy", np.ones((3, 5), np.float64))
    x = load_image_features(tmp_path / "f.npy", 3)
    assert x.dtype == torch.float32 and x.shape == (3, 5)
    with pytest.raises(SemidError, match="3 feature rows for 4 images"):
        load_image_features(tmp_path / "f.npy", 4)


@pytest.mark.slow
def test_real_fashion_mnist():
    try:
        splits = load_fashion_mnist()
    except SemidError as e:
        pytest.skip(str(e))
    assert splits.train.images.shape == (60000, 28, 28) and splits.test.images.shape == (
        10000,
        28,
        28,
    )
    assert splits.train.class_names == FASHION_CLASSES
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10


# --- a user's own collection -----------------------------------------------------------------


def write_png(path, shape, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_collection_folder_resizes_names_and_stratifies(tmp_path):
    for i in range(5):
        write_png(tmp_path / "golden_retriever" / f"{i}.png", (8 + i, 10), 40)  # gray, sizes vary
        write_png(tmp_path / "tabby-cat" / f"{i}.png", (12, 12, 3), 200)  # RGB
    (tmp_path / "no_images").mkdir()
    splits = load_image_collection(tmp_path, seed=0, test_fraction=0.4)
    assert splits.train.class_names == splits.test.class_names == ["golden retriever", "tabby cat"]
    assert splits.train.images.shape == (6, 3, 11, 11)  # median shorter side; gray -> 3 channels
    assert splits.test.labels.tolist() == [0, 0, 1, 1]  # 2 of 5 per class, in file order
    assert int(splits.test.images[-1].min()) == 200
    assert set(splits.train.keys).isdisjoint(splits.test.keys)
    assert splits.train.texts()[0] == "a photo of a golden retriever"
    again = load_image_collection(tmp_path, seed=0, test_fraction=0.4)
    assert again.test.keys == splits.test.keys
    others = {
        tuple(load_image_collection(tmp_path, seed=s, test_fraction=0.4).test.keys)
        for s in range(1, 5)
    }
    assert others != {tuple(splits.test.keys)}


def test_collection_table_of_paths_and_captions(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", (6, 6), 1)
    write_png(tmp_path / "imgs" / "b.png", (6, 6), 2)
    write_png(tmp_path / "c.png", (6, 6), 3)
    np.save(tmp_path / "imgs" / "d.npy", np.full((6, 6), 4, np.uint8))
    (tmp_path / "list.csv").write_text(
        f'path,caption,label\nimgs/a.png,"a dog, running",dog\nimgs/b.png,a dog,dog\n'
        f"{tmp_path / 'c.png'},a cat,cat\nimgs/d.npy,another cat,cat\n"
    )
    splits = load_image_collection(tmp_path / "list.csv", test_fraction=0.5)
    assert splits.name == "list" and splits.train.class_names == ["cat", "dog"]
    cased = tmp_path / "cased.csv"  # a class's text is lower-cased: "Dog" and "dog" are one
    cased.write_text((tmp_path / "list.csv").read_text().replace('running",dog', 'running",Dog'))
    with pytest.raises(SemidError, match="labels of .*: 'Dog' and 'dog' both read as class 'dog'"):
        load_image_collection(cased, test_fraction=0.5)
    spaced = tmp_path / "spaced.csv"  # and runs of white space read as one: "big  dog" is "big dog"
    spaced.write_text((tmp_path / "list.csv").read_text().replace("a dog,dog", "a dog,big dog")
                      .replace('running",dog', 'running",big  dog'))  # fmt: skip
    with pytest.raises(SemidError, match="'big  dog' and 'big dog' both read as class 'big dog'"):
        load_image_collection(spaced, test_fraction=0.5)
    assert len(splits.train) == len(splits.test) == 2 and splits.train.images.shape[1:] == (6, 6)
    both = dict(
        zip(
            splits.train.keys + splits.test.keys,
            splits.train.captions + splits.test.captions,
            strict=True,
        )
    )
    assert both["imgs/a.png"] == "a dog, running" and both["imgs/d.npy"] == "another cat"
    (tmp_path / "captions.jsonl").write_text(
        '{"image": "imgs/a.png", "text": "x"}\n{"image": "imgs/b.png", "text": "y"}\n'
    )
    plain = load_image_collection(tmp_path / "captions.jsonl", test_fraction=0.5)
    assert plain.train.labels is None and len(plain.test) == 1


@pytest.mark.parametrize(
    "content, words",
    [
        ("path,caption\nmissing.png,x\n", "line 2: image"),
        (
            "path,caption\nimgs/a.png,x\nhttps://example.com/b.jpg,y\n",
            "line 3: image https://example.com/b.jpg is a URL",
        ),
        ("path,note\nimgs/a.png,x\n", "needs a caption column"),
        (
            "file,label\nimgs/a.png,x\nimgs/a.png,x\n",
            "line 3 repeats 'imgs/a.png' (first at line 2); list each image once (several rows",
        ),
        (
            "file,label\nimgs/a.png,x\n./imgs/a.png,y\n",
            "line 3 repeats './imgs/a.png' (first at line 2 as 'imgs/a.png')",
        ),
        (
            "file,caption,label\nimgs/a.png,x,dog\nimgs/a.png,y, cat\n",
            "line 3 repeats 'imgs/a.png' (first at line 2) with label 'cat' instead of 'dog'",
        ),
        ("path,label\nimgs/a.png,\n", "line 2: empty label"),
        ("path,label\nimgs/a.png,   \n", "line 2: empty label"),
        ("path,label\nimgs/a.png,dog\n", "too few images to split"),
    ],
)
def test_collection_table_errors(tmp_path, content, words):
    write_png(tmp_path / "imgs" / "a.png", (4, 4), 1)
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(SemidError) as e:
        load_image_collection(tmp_path / "list.csv")
    assert words in str(e.value)


def test_an_image_on_several_rows_has_several_captions(tmp_path):
    """As Flickr30k and COCO give five captions per image: one image each, every caption a query."""
    for name in "ab":
        write_png(tmp_path / "imgs" / f"{name}.png", (4, 4), 1)
    (tmp_path / "caps.csv").write_text(
        "image,caption\nimgs/a.png,a dog\nimgs/b.png,a cat\n./imgs/a.png,a dog running\n"
        "imgs/a.png,a dog\nimgs/a.png,a brown dog\n"
    )
    data = load_images(tmp_path / "caps.csv")
    assert data.keys == ["imgs/a.png", "imgs/b.png"] and len(data.images) == 2
    assert data.captions == ["a dog", "a cat"] and data.shown_texts() == ["a dog", "a cat"]
    assert data.more_captions == [("a dog running", "a brown dog"), ()]  # a repeated caption once
    texts, rows = data.caption_queries()
    assert texts == ["a dog", "a dog running", "a brown dog", "a cat"] and rows.tolist() == [
        0,
        0,
        0,
        1,
    ]
    splits = load_image_collection(tmp_path / "caps.csv", test_fraction=0.5)
    assert sorted(len(s.caption_queries()[0]) for s in (splits.train, splits.test)) == [1, 3]
    (tmp_path / "caps.jsonl").write_text(  # COCO converted: a list of captions per image
        '{"image": "imgs/a.png", "captions": ["a dog", " ", "a brown dog"]}\n'
        '{"image": "imgs/b.png", "captions": ["a cat"]}\n{"image": "imgs/a.png", "captions": ["a dog", "a pup"]}\n'
    )
    data = load_images(tmp_path / "caps.jsonl")
    assert data.captions == ["a dog", "a cat"]
    assert data.more_captions == [("a brown dog", "a pup"), ()]
    (tmp_path / "none.jsonl").write_text('{"image": "imgs/a.png", "captions": []}\n')
    with pytest.raises(
        SemidError, match="none.jsonl row 1: no caption in 'captions'; give every row one"
    ):
        load_images(tmp_path / "none.jsonl")


def test_labels_that_differ_by_spaces_are_one_class(tmp_path):
    for name in "abcd":
        write_png(tmp_path / f"{name}.png", (4, 4), 1)
    (tmp_path / "list.csv").write_text("path,label\na.png,dog\nb.png, dog\nc.png,cat \nd.png,cat\n")
    splits = load_image_collection(tmp_path / "list.csv", test_fraction=0.5)
    assert splits.train.class_names == ["cat", "dog"] and len(splits.test) == 2


def test_collection_path_and_fraction_errors(tmp_path):
    with pytest.raises(SemidError, match="not found"):
        load_image_collection(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SemidError, match="neither a folder"):
        load_image_collection(tmp_path / "x.txt")
    with pytest.raises(SemidError, match="strictly between 0 and 1"):
        load_image_collection(tmp_path, test_fraction=1.0)
    for name in ("a_b", "a-b"):
        write_png(tmp_path / name / "1.png", (4, 4), 1)
    with pytest.raises(SemidError, match="both read as class 'a b'"):
        load_image_collection(tmp_path)
    (tmp_path / "a-b" / "1.png").rename(tmp_path / "a_b" / "2.png")
    (tmp_path / "a-b").rmdir()
    write_png(tmp_path / "A_B" / "1.png", (4, 4), 1)  # the texts are lower-cased: the same class
    with pytest.raises(
        SemidError,
        match="class folders in .*: 'A_B' and 'a_b' both read as class 'a b'; rename one",
    ):
        load_image_collection(tmp_path)


def test_resize_square_crops_the_centre():
    image = np.zeros((10, 20), np.uint8)
    image[:, 5:15] = 255  # the centre half is white
    out = resize_square(image, 8)
    assert out.shape == (8, 8) and out.min() > 200  # shorter side 10 -> 8, then the centre 8x8
    assert stack_images([image, image[:, :10]], "x", size=4).shape == (2, 4, 4)


def test_generic_class_texts_are_held_out_and_replace_fashion_words():
    train, train_labels = class_texts(["apple", "Red car"], "train")
    test, test_labels = class_texts(["apple", "Red car"], "test")
    assert "a photo of an apple" in train and "a photo of a red car" in train
    assert not set(train) & set(test)
    assert (train_labels == 1).sum() >= 3 and (test_labels == 1).sum() >= 3
    assert class_queries("test", ["apple", "Red car"])[0] == test  # any non-Fashion class list
    assert "show me a tee with short sleeves" not in class_queries("test")[0]  # fashion unchanged
    assert "i am looking for a tee" in class_queries("test")[0]


def test_digits_registration_splits_1000_test_images():
    pytest.importorskip("sklearn")
    from semid.data import load_dataset
    from semid.data.registry import dataset_kind

    splits = load_dataset("digits")
    train, test = splits.train, splits.test
    assert dataset_kind("digits") == "images"
    assert len(train) + len(test) == 1797 and 990 <= len(test) <= 1010
    assert train.images.shape[1:] == (8, 8) and train.images.dtype == torch.uint8
    assert int(test.images.max()) == 255 and int(test.images.min()) == 0
    assert train.class_names == test.class_names and len(train.class_names) == 10
    assert train.class_names[0] == "zero" and train.class_names[9] == "nine"
    # stratified: every class on both sides, in the collection's proportions (about 100 each)
    assert torch.bincount(test.labels, minlength=10).min() >= 95
    assert not set(train.keys) & set(test.keys)
    assert load_dataset("digits").test.keys == test.keys  # the split is pinned


def test_digit_queries_are_generic_and_held_out():
    names = ["zero", "one", "eight"]
    train, _ = class_queries("train", names)
    test, labels = class_queries("test", names)
    assert not set(train) & set(test) and labels.tolist().count(2) >= 3
    assert "show me a one" in test and "show me an eight" in test
    assert (
        describe_class("eight") == "a photo of an eight"
        and describe_class("Ankle boot") == "a photo of an ankle boot"
    )
    assert [article(w) for w in ("apple", "one", "unicorn", "car")] == ["an", "a", "a", "a"]


def test_auto_size_makes_a_shared_non_square_size_square_and_caps_it(tmp_path):
    for i in range(3):
        write_png(tmp_path / "phone" / "c" / f"{i}.jpg", (30, 40, 3), 90)  # one shared 40x30 size
        write_png(tmp_path / "big" / "c" / f"{i}.png", (300, 400), 10)
        write_png(tmp_path / "small" / "c" / f"{i}.png", (28, 28), 10)
    assert load_image_folder(tmp_path / "phone", image_size="auto").images.shape == (3, 3, 30, 30)
    assert load_image_folder(tmp_path / "big", image_size="auto").images.shape == (3, 64, 64)
    small = load_image_folder(
        tmp_path / "small", image_size="auto"
    )  # small images stay as they are
    assert small.images.shape == (3, 28, 28) and int(small.images.max()) == 10


def test_folder_skips_hidden_entries_and_finds_nested_images(tmp_path):
    write_png(tmp_path / "shoe" / "a.png", (4, 4), 1)
    write_png(tmp_path / "shoe" / "2019 trip" / "b.png", (4, 4), 2)
    write_png(tmp_path / "bag" / "c.png", (4, 4), 3)
    (tmp_path / "shoe" / "._a.png").write_bytes(b"\0\5\26\7 Mac OS X AppleDouble")
    for hidden in (".thumbnails", "@eaDir", "__MACOSX"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "x.png").write_bytes(b"not an image")
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ["bag", "shoe"]
    assert ds.keys == ["bag/c.png", "shoe/2019 trip/b.png", "shoe/a.png"]


def test_transparent_images_are_composited_on_white(tmp_path):
    icon = np.zeros((6, 6, 4), np.uint8)
    icon[2:4, 2:4, 3] = 255  # a black square drawn only in alpha
    Image.fromarray(icon, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(icon[:, :, 2:], "LA").save(tmp_path / "la.png")
    Image.fromarray(icon, "RGBA").convert("P").save(tmp_path / "pal.png", transparency=0)
    for name in ("rgba.png", "la.png"):
        pixels = read_image(tmp_path / name)
        assert pixels.min() == 0 and pixels.max() == 255, name
        assert pixels[0, 0].min() == 255 and pixels[2, 2].max() == 0, name
    assert read_image(tmp_path / "pal.png").max() == 255  # transparent palette entry -> white


def test_encoder_converts_grey_and_colour_images():
    enc = ImageEncoder(ImageEncoderConfig(image_size=8, channels=(4,), dim=4))
    grey = torch.randint(0, 256, (2, 8, 8), dtype=torch.uint8)
    assert enc.encode(grey[:, None].expand(-1, 3, -1, -1)).shape == (2, 4)  # colour into grey
    assert torch.allclose(enc.encode(grey[:, None].expand(-1, 3, -1, -1)), enc.encode(grey))
    colour = ImageEncoder(ImageEncoderConfig(in_channels=3, image_size=8, channels=(4,), dim=4))
    assert colour.encode(grey).shape == (2, 4)  # grey into colour


def test_image_table_column_advice_needs_no_columns_option(tmp_path):
    write_png(tmp_path / "a.png", (4, 4), 1)
    (tmp_path / "two.csv").write_text("path,file,label\na.png,a.png,x\n")
    (tmp_path / "none.csv").write_text("picture,label\na.png,x\n")
    for name, advice in (("two.csv", "rename all but one"), ("none.csv", "rename it")):
        with pytest.raises(SemidError, match=advice) as info:
            load_image_collection(tmp_path / name)
        assert "--columns" not in str(info.value)


def test_deep_grey_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(16, dtype=np.uint16) * 4369).reshape(4, 4)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit PNG, Pillow mode I;16
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "deep.tif")  # mode I
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tif")  # mode F
    for name in ("deep.png", "deep.tif", "float.tif"):
        pixels = read_image(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.shape == (4, 4), name
        np.testing.assert_array_equal(pixels, (np.arange(16) * 17).reshape(4, 4), err_msg=name)
    Image.fromarray(np.full((4, 4), -5, np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(SemidError, match="outside 0..65535; save it as 8- or 16-bit"):
        read_image(tmp_path / "negative.tif")


def test_an_image_over_pillows_pixel_limit_is_refused_in_one_line(tmp_path, monkeypatch):
    write_png(tmp_path / "cat" / "huge.png", (10, 10), 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # Pillow refuses over twice this: 100 > 40
    with pytest.raises(SemidError, match=r"huge.png is over Pillow's limit of 40 pixels .* shrink"):
        load_image_folder(tmp_path, image_size="auto")


def test_pillows_warnings_become_one_note_for_the_collection(tmp_path, monkeypatch, capsys):
    for name in ("a", "b"):
        write_png(tmp_path / "cat" / f"{name}.png", (6, 6), 1)  # 36 pixels: warned, not refused
        write_png(tmp_path / "dog" / f"{name}.png", (4, 4), 2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # Pillow warns over 20, refuses over 40
    load_image_folder(tmp_path, image_size="auto")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"semid: note: {tmp_path}: Pillow warned while reading 2 images (first, "
    )
    assert "a.png: Image size (36 pixels) exceeds limit of 20 pixels" in line


def test_a_folder_link_back_up_the_tree_is_refused_not_followed(tmp_path):
    write_png(tmp_path / "photos" / "shoe" / "a.png", (4, 4), 1)
    write_png(tmp_path / "photos" / "bag" / "b.png", (4, 4), 2)
    (tmp_path / "photos" / "shoe" / "all").symlink_to("..")  # a loop: photos/shoe/all/shoe/all/...
    with pytest.raises(SemidError, match=r"shoe/all links to .*photos, a folder that holds it"):
        load_image_folder(tmp_path / "photos")
    (tmp_path / "photos" / "shoe" / "all").unlink()
    (tmp_path / "photos" / "shoe" / "bags").symlink_to("../bag")  # a link elsewhere is followed
    keys = load_image_folder(tmp_path / "photos").keys
    assert keys == ["bag/b.png", "shoe/a.png", "shoe/bags/b.png"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"P5 3 2 abc\n" + bytes(6)), "is not a binary 8-bit PGM"),
        (lambda p: p.write_bytes(b"P5 3 -2 255\n" + bytes(6)), "is not a binary 8-bit PGM"),
        (lambda p: p.symlink_to(p.parent / "gone.pgm"), "cannot read image .*No such file"),
    ],
    ids=["maxval", "negative", "broken-link"],
)
def test_unreadable_pgm_files_raise_one_clear_error(tmp_path, make, message):
    make(tmp_path / "a.pgm")
    with pytest.raises(SemidError, match=message):
        read_image(tmp_path / "a.pgm")


def test_a_folder_captions_file_that_is_not_utf8_is_named(tmp_path):
    write_png(tmp_path / "cat" / "a.png", (4, 4), 1)
    (tmp_path / "captions.tsv").write_bytes("cat/a.png\ta caf\xe9 cat\n".encode("latin-1"))
    with pytest.raises(SemidError, match=r"captions file .*captions.tsv line 1 is not UTF-8"):
        load_image_folder(tmp_path)
    (tmp_path / "captions.tsv").write_text("\ufeffcat/a.png\ta café cat\n")  # a BOM is skipped
    assert load_image_folder(tmp_path).captions == ["a café cat"]


def test_images_beside_the_class_subfolders_are_refused_not_dropped(tmp_path):
    write_png(tmp_path / "shoe" / "a.png", (4, 4), 1)
    write_png(tmp_path / "b.png", (4, 4), 2)  # in no class
    (tmp_path / "readme.txt").write_text("not an image")
    with pytest.raises(
        SemidError, match=r"holds 1 image beside its class subfolders \(e.g. 'b.png'\)"
    ):
        load_image_folder(tmp_path)
    (tmp_path / "b.png").unlink()
    (tmp_path / "features.npy").write_bytes(b"")  # not taken for an image
    assert load_image_folder(tmp_path).keys == ["shoe/a.png"]


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :5] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (30, 10, 3)
    assert upright[:5].min() > 200 and upright[-5:].max() < 50  # the band is now at the top


def test_a_large_photo_is_decoded_at_a_reduced_scale_no_smaller_than_the_working_size(tmp_path):
    rows, cols = np.mgrid[0:768, 0:1024]
    smooth = np.stack([rows / 3, cols / 4, (rows + cols) / 7], axis=-1) % 256
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side, as a phone writes it
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "p.jpg", exif=exif, quality=95)
    full = read_image(tmp_path / "p.jpg")
    assert full.shape == (1024, 768, 3)  # upright
    assert read_image(tmp_path / "p.jpg", min_size=32).shape == (128, 96, 3)  # 1/8 scale
    # 1/2, as 1/4 would leave a side under 200
    assert read_image(tmp_path / "p.jpg", min_size=200).shape == (512, 384, 3)
    stacked = read_images([tmp_path / "p.jpg"], "photos", 32)[0]
    exact = np.moveaxis(resize_square(full, 32), -1, 0)
    assert np.abs(stacked.astype(int) - exact).mean() < 3  # the same picture at 32 px
    assert read_images([tmp_path / "p.jpg"], "photos", None)[0].shape == (3, 1024, 768)
    # the 'auto' size is the median of the images as stored, not as decoded: (40 + 300) / 2 -> 64
    write_png(tmp_path / "small.png", (40, 40, 3), 9)
    Image.fromarray(smooth[:300, :400].astype(np.uint8)).save(tmp_path / "q.jpg")
    mixed = read_images([tmp_path / "small.png", tmp_path / "q.jpg"], "mixed")
    assert mixed.shape == (2, 3, 64, 64)


def test_jfif_photos_are_read_and_heic_photos_are_refused_not_skipped(tmp_path):
    write_png(tmp_path / "shoe" / "a.png", (4, 4), 1)
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "shoe" / "b.jfif", "JPEG")
    (tmp_path / "shoe" / "notes.txt").write_text("not an image, skipped")
    assert load_image_folder(tmp_path).keys == ["shoe/a.png", "shoe/b.jfif"]
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(SemidError, match=r"IMG_0001.HEIC: HEIC images cannot be read; convert"):
        load_image_folder(tmp_path)


def test_images_too_small_for_the_encoder_say_how_large_they_must_be(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / cls / f"{i}.png", (2, 2), 50 * i)
    images = load_image_folder(tmp_path, image_size="auto").images
    with pytest.raises(SemidError, match="give images of at least 4 px on their shorter side"):
        ImageEncoder(ImageEncoderConfig(image_size=images.shape[-1]))


def test_image_texts_are_embedded_once_per_distinct_text(monkeypatch):
    """Class wordings repeat over thousands of images: each distinct text is encoded once and its
    row is given back to every image that has it, in the images' order."""
    from semid.encoders import TextEncoder
    from semid.tasks.text2image import embed_texts

    encoded = []

    def encode(self, texts, show_progress=True, cache=True):
        encoded.append(list(texts))
        return torch.tensor([[float(len(t)), float(ord(t[0]))] for t in texts])

    monkeypatch.setattr(TextEncoder, "__init__", lambda self, **kwargs: None)
    monkeypatch.setattr(TextEncoder, "encode", encode)
    texts = ["a shoe", "a bag", "a shoe", "a coat", "a bag"]
    x = embed_texts(texts)
    assert encoded == [["a shoe", "a bag", "a coat"]]
    assert torch.equal(x, encode(None, texts))


def test_reading_many_images_shows_a_bar_and_a_few_stay_quiet(tmp_path, monkeypatch, capsys):
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, file in enumerate(files):
        write_png(file, (8, 8), i)
    assert read_images(files, "photos", 8).shape == (3, 8, 8)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(image_io, "READ_QUIETLY", 2)
    assert read_images(files, "photos", 8).shape == (3, 8, 8)
    assert "read images" in capsys.readouterr().err


def test_a_subset_keeps_each_images_labels_captions_and_split_marks():
    data = ImageDataset(
        images=torch.arange(4, dtype=torch.uint8).view(4, 1, 1).expand(4, 2, 2).contiguous(),
        keys=["a", "b", "c", "d"],
        labels=torch.tensor([0, 1, 0, 1]),
        class_names=["x", "y"],
        captions=["ca", "cb", "cc", "cd"],
        more_captions=[("a2",), ("b2",), ("c2",), ("d2",)],
        given_test=torch.tensor([False, True, False, True]),
    )
    part = data.subset([3, 0], "part")
    assert part.keys == ["d", "a"] and part.images[:, 0, 0].tolist() == [3, 0]
    assert part.labels.tolist() == [1, 0] and part.class_names == ["x", "y"]
    assert part.captions == ["cd", "ca"] and part.more_captions == [("d2",), ("a2",)]
    assert part.given_test.tolist() == [True, False] and part.name == "part"
    assert len(data.subset([])) == 0 and data.subset([1]).name == data.name


def test_an_empty_image_file_and_a_utf16_captions_file_say_what_they_are(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"")  # an interrupted copy
    with pytest.raises(
        SemidError, match=r"cannot read image .*a.png: it is empty \(0 bytes\); replace"
    ):
        read_image(tmp_path / "cat" / "a.png")
    write_png(tmp_path / "cat" / "a.png", (4, 4), 1)
    (tmp_path / "captions.tsv").write_bytes("cat/a.png\ta cat\n".encode("utf-16"))
    with pytest.raises(SemidError, match=r"captions.tsv is UTF-16 text .*; save it as UTF-8"):
        load_image_folder(tmp_path)


def test_every_unreadable_image_of_a_folder_is_named_in_one_go(tmp_path):
    """A zero-byte file, a truncated PNG and a text file named .png: one run named one of them,
    so a folder's bad files took a run each to find."""
    (tmp_path / "cat").mkdir()
    for name in ("a", "c", "e"):
        write_png(tmp_path / "cat" / f"{name}.png", (4, 4), 1)
    (tmp_path / "cat" / "b.png").write_bytes(b"")
    (tmp_path / "cat" / "d.png").write_bytes((tmp_path / "cat" / "a.png").read_bytes()[:30])
    (tmp_path / "cat" / "f.png").write_text("not an image")
    with pytest.raises(SemidError) as e:
        load_image_folder(tmp_path)
    told = str(e.value)
    assert "\n" not in told
    assert told.startswith(f"cannot read image {tmp_path / 'cat' / 'b.png'}: it is empty")
    assert told.endswith(f"(and 2 other images that cannot be read either: {tmp_path / 'cat' / 'd.png'}, "
                         f"{tmp_path / 'cat' / 'f.png'})")  # fmt: skip
    files = [tmp_path / "cat" / f"{name}.png" for name in "ace"]
    assert read_images(files, "three", size=None).shape[0] == 3  # readable ones, at their size

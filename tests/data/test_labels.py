"""Class labels: StyleGAN2-ADA's dataset.json in a folder or zip, prepare_dataset's class sub-folders, and
every labelling fault as one line naming the entry."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from stylenat.data import DatasetError, build_dataset, label_pool, prepare_dataset


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def class_folders(tmp_path):
    """src/cats/{0,1}.png, src/dogs/{0,1,2}.png: two classes by sub-folder."""
    src = tmp_path / "src"
    for name, count, value in (("dogs", 3, 200), ("cats", 2, 40)):
        for i in range(count):
            _image(src / name / f"{i}.png", value)
    return src


def _labelled(tmp_path, labels, class_names=None, images=("a.png", "b.png", "c.png")):
    folder = tmp_path / "labelled"
    for i, name in enumerate(images):
        _image(folder / name, 10 * i)
    data = {"labels": labels}
    if class_names is not None:
        data["class_names"] = class_names
    (folder / "dataset.json").write_text(json.dumps(data))
    return folder


def test_a_folder_with_dataset_json_yields_images_and_classes(tmp_path):
    folder = _labelled(tmp_path, [["a.png", 1], ["b.png", 0], ["c.png", 2]], ["x", "y", "z"])
    ds = build_dataset(folder, 8, use_labels="auto", xflip=True)
    assert (ds.c_dim, ds.class_names, ds.labels.tolist()) == (3, ["x", "y", "z"], [1, 0, 2])
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and label == 1
    assert ds[3 + 2][1] == 2  # the x-flipped copy keeps its label
    # without class_names the classes are 0 .. max, unnamed
    folder2 = _labelled(tmp_path / "2", [["a.png", 1], ["b.png", 0], ["c.png", 4]])
    ds2 = build_dataset(folder2, 8, use_labels=True)
    assert (ds2.c_dim, ds2.class_names) == (5, None)


def test_use_labels_off_or_absent_keeps_the_unlabelled_data_set(tmp_path, class_folders):
    folder = _labelled(tmp_path, [["a.png", 1], ["b.png", 0], ["c.png", 2]])
    off = build_dataset(folder, 8, use_labels=False)
    assert off.labels is None and off.c_dim == 0 and off[0].shape == (3, 8, 8)
    auto = build_dataset(class_folders, 8, use_labels="auto")  # no dataset.json
    assert auto.labels is None and auto.c_dim == 0
    with pytest.raises(DatasetError, match=r"^use_labels=true but .*src has no class labels") as err:
        build_dataset(class_folders, 8, use_labels=True)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="use_labels='yes': expected auto, true or false"):
        build_dataset(class_folders, 8, use_labels="yes")
    (folder / "dataset.json").write_text(json.dumps({"labels": None}))  # dataset_tool's unlabelled form
    assert build_dataset(folder, 8, use_labels="auto").c_dim == 0


@pytest.mark.parametrize(
    "labels, message",
    [
        (
            [["a.png", 0], ["b.png", 1], ["c.png", 1], ["gone.png", 0]],
            r"entry 3 \['gone.png', 0\]: gone.png does not exist in",
        ),
        ([["a.png", 0], ["b.png", None], ["c.png", 1]], r"entry 1 \['b.png', None\]: b.png has no class"),
        ([["a.png", 0], ["b.png"], ["c.png", 1]], r"entry 1 \['b.png'\]: b.png has no class"),
        (
            [["a.png", 0], ["b.png", 1.5], ["c.png", 1]],
            r"entry 1 \['b.png', 1.5\]: class must be an integer >= 0",
        ),
        (
            [["a.png", -1], ["b.png", 1], ["c.png", 1]],
            r"entry 0 \['a.png', -1\]: class must be an integer >= 0",
        ),
        ([["a.png", 0], ["b.png", "1"], ["c.png", 1]], r"entry 1 \['b.png', '1'\]: class must be an integer"),
        ([["a.png", 0], ["c.png", 1]], r"labels 2 of 3 images: b.png has no entry \(1 unlabelled\)"),
        (
            [["a.png", 0], ["b.png", 1], ["c.png", 1], ["a.png", 1]],
            r"entry 3 \['a.png', 1\]: a.png is listed twice",
        ),
        ([["a.png", 0], "b.png", ["c.png", 1]], r"entry 1 'b.png': expected \[relative_path, class\]"),
    ],
    ids=[
        "missing-file",
        "null-class",
        "no-class",
        "float",
        "negative",
        "string",
        "some-only",
        "twice",
        "not-a-pair",
    ],
)
def test_each_labelling_fault_is_one_line_naming_the_entry(tmp_path, labels, message):
    folder = _labelled(tmp_path, labels)
    with pytest.raises(DatasetError, match=message) as err:
        build_dataset(folder, 8, use_labels="auto")
    text = str(err.value)
    assert "\n" not in text and "dataset.json" in text


def test_a_class_beyond_class_names_and_bad_json_are_one_line(tmp_path):
    folder = _labelled(tmp_path, [["a.png", 0], ["b.png", 2], ["c.png", 1]], ["x", "y"])
    with pytest.raises(DatasetError, match=r"entry 1 \['b.png', 2\]: class 2 >= 2 class_names"):
        build_dataset(folder, 8, use_labels="auto")
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json is not valid JSON"):
        build_dataset(folder, 8, use_labels="auto")


def test_prepare_dataset_writes_labels_from_class_sub_folders(tmp_path, class_folders):
    dst = tmp_path / "out.zip"
    manifest = prepare_dataset(class_folders, dst, 8, class_folders=True)
    assert manifest["classes"] == 2
    with zipfile.ZipFile(dst) as zf:
        written = json.loads(zf.read("dataset.json"))
    # images in sorted path order (cats/0, cats/1, dogs/0..2), classes in sorted folder-name order
    assert written["class_names"] == ["cats", "dogs"]
    assert written["labels"] == [
        ["00000/img00000000.png", 0],
        ["00000/img00000001.png", 0],
        ["00000/img00000002.png", 1],
        ["00000/img00000003.png", 1],
        ["00000/img00000004.png", 1],
    ]
    ds = build_dataset(dst, 8, use_labels="auto", normalize=None)
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.class_names == ["cats", "dogs"]
    assert [int(ds[i][0][0, 0, 0]) for i in range(5)] == [40, 40, 200, 200, 200]  # each image's own class
    pool, c_dim, names = label_pool(dst)
    assert sorted(pool.tolist()) == [0, 0, 1, 1, 1] and c_dim == 2 and names == ["cats", "dogs"]


def test_prepare_dataset_carries_a_source_dataset_json_over_and_refuses_loose_images(tmp_path, class_folders):
    folder = _labelled(tmp_path, [["a.png", 1], ["b.png", 0], ["c.png", 1]], ["x", "y"])
    prepare_dataset(folder, tmp_path / "carried.zip", 8)
    ds = build_dataset(tmp_path / "carried.zip", 8, use_labels=True)
    assert ds.labels.tolist() == [1, 0, 1] and ds.class_names == ["x", "y"]
    _image(class_folders / "loose.png", 0)
    with pytest.raises(DatasetError, match="loose.png is not in a class sub-folder"):
        prepare_dataset(class_folders, tmp_path / "x.zip", 8, class_folders=True)


def test_a_zip_listing_a_missing_member_names_it(tmp_path):
    dst = tmp_path / "z.zip"
    with zipfile.ZipFile(dst, "w") as zf:
        for i in range(2):
            img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
            import io

            buf = io.BytesIO()
            img.save(buf, format="png")
            zf.writestr(f"img{i}.png", buf.getvalue())
        zf.writestr(
            "dataset.json", json.dumps({"labels": [["img0.png", 0], ["img1.png", 1], ["img2.png", 1]]})
        )
    with pytest.raises(
        DatasetError, match=r"dataset.json in .*z.zip: entry 2 \['img2.png', 1\]: img2.png does not exist"
    ):
        build_dataset(dst, 8, use_labels="auto")


def test_the_two_class_demo_is_the_demo_faces_then_the_non_faces(tmp_path):
    from stylenat.data.demo import demo_classes_dataset_path, demo_dataset_path

    path = demo_classes_dataset_path(tmp_path)
    ds = build_dataset(path, 32, use_labels="auto", normalize=None)
    assert (ds.num_images, ds.c_dim, ds.class_names) == (200, 2, ["faces", "nonfaces"])
    assert ds.labels.tolist() == [0] * 100 + [1] * 100
    faces = build_dataset(demo_dataset_path(tmp_path), 32, normalize=None)
    assert all(
        np.array_equal(ds.load_uint8(i), faces.load_uint8(i)) for i in (0, 57, 99)
    )  # class 0 = the demo set
    assert not np.array_equal(ds.load_uint8(100), faces.load_uint8(0))
    assert demo_classes_dataset_path(tmp_path) == path  # built once

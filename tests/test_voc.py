"""Pascal VOC reader on fixture directories built here, every bad case included."""
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from minissd.data import BadDataWarning, VOCDataset, open_dataset
from minissd.data.voc import VOC_CLASSES


def _obj(name, box, difficult=0):
    xmin, ymin, xmax, ymax = box
    return (f"  <object>\n    <name>{name}</name>\n    <difficult>{difficult}</difficult>\n"
            f"    <bndbox>\n      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n"
            f"      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>\n")


def _xml(image_id, objects, width=40, height=30):
    return (f"<annotation>\n  <filename>{image_id}.jpg</filename>\n"
            f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
            + "".join(objects) + "</annotation>\n")


def make_voc(root, annotations, split="trainval", image_sizes=None, year="2007", classes=None):
    """Write VOCdevkit/VOC<year> under root: {id: xml text}; returns the VOC<year> directory."""
    voc = os.path.join(root, "VOCdevkit", f"VOC{year}")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    for image_id, xml in annotations.items():
        with open(os.path.join(voc, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml)
        w, h = (image_sizes or {}).get(image_id, (40, 30))
        pixels = np.random.default_rng(len(image_id)).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(voc, "JPEGImages", image_id + ".jpg"))
    with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("".join(i + "\n" for i in annotations))
    if classes is not None:
        with open(os.path.join(voc, "classes.txt"), "w") as f:
            f.write("\n".join(classes) + "\n")
    return voc


def test_reads_boxes_labels_and_converts_1_based_pixels(tmp_path):
    make_voc(tmp_path, {
        "000001": _xml("000001", [_obj("dog", (1, 1, 40, 30)), _obj("person", (11, 6, 20, 15))]),
        "000002": _xml("000002", []),  # no objects: a valid sample
    })
    ds = VOCDataset(str(tmp_path), "trainval")
    assert len(ds) == 2 and ds.class_names == VOC_CLASSES
    s = ds.get(0)
    assert s.image.shape == (30, 40, 3) and s.image.dtype == np.uint8 and s.image_id == "000001"
    # xmin..xmax = 1..40 covers pixels 0..39, i.e. [0, 40) -- the whole image.
    np.testing.assert_array_equal(s.boxes, [[0, 0, 40, 30], [10, 5, 20, 15]])
    assert s.boxes.dtype == np.float32
    assert s.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    empty = ds.get(1)
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.difficult.shape == (0,)


def test_root_forms_and_year(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", [_obj("cat", (2, 2, 9, 9))])})
    for root in (str(tmp_path), os.path.join(tmp_path, "VOCdevkit"), voc):
        assert len(VOCDataset(root, "trainval")) == 1
    assert len(VOCDataset(str(tmp_path), "trainval", year=2007)) == 1
    make_voc(tmp_path, {"b": _xml("b", [])}, year="2012")
    with pytest.raises(ValueError, match="year"):
        VOCDataset(str(tmp_path), "trainval")
    assert VOCDataset(str(tmp_path), "trainval", year="2012").ids == ["b"]
    with pytest.raises(ValueError, match="root"):
        VOCDataset(str(tmp_path / "nowhere"), "trainval")


def test_difficult_dropped_for_training_kept_flagged_for_evaluation(tmp_path):
    ann = {"x": _xml("x", [_obj("cat", (2, 2, 9, 9)), _obj("cow", (3, 3, 20, 20), difficult=1)])}
    make_voc(tmp_path, ann, split="trainval")
    make_voc(tmp_path, ann, split="test")
    train = VOCDataset(str(tmp_path), "trainval").get(0)
    assert train.labels.tolist() == [VOC_CLASSES.index("cat") + 1] and not train.difficult.any()
    test = VOCDataset(str(tmp_path), "test").get(0)
    assert test.difficult.tolist() == [False, True] and len(test.labels) == 2
    assert VOCDataset(str(tmp_path), "trainval", keep_difficult=True).get(0).difficult.tolist() == [False, True]


def test_custom_classes_list_file_and_classes_txt(tmp_path):
    voc = make_voc(tmp_path, {"x": _xml("x", [_obj("star", (2, 2, 9, 9)), _obj("moon", (1, 1, 5, 5))])},
                   classes=["moon", "star"])
    ds = VOCDataset(voc, "trainval")
    assert ds.class_names == ("moon", "star") and ds.get(0).labels.tolist() == [2, 1]
    ds = VOCDataset(voc, "trainval", class_names=["star", "moon"])
    assert ds.get(0).labels.tolist() == [1, 2]
    names = tmp_path / "names.txt"
    names.write_text("# my classes\nstar\nmoon\n")
    assert VOCDataset(voc, "trainval", class_names=str(names)).class_names == ("star", "moon")


def test_open_dataset_voc_spec(tmp_path):
    voc = make_voc(tmp_path, {"x": _xml("x", [_obj("cat", (2, 2, 9, 9))])}, split="val")
    ds = open_dataset(f"voc:{voc}:val")
    assert len(ds) == 1 and ds.split == "val"
    assert open_dataset(f"voc:{voc}", split="val").split == "val"
    with pytest.raises(ValueError, match="spec"):
        open_dataset("voc:")
    with pytest.raises(ValueError, match="spec"):
        open_dataset("imagenet:/data")


# --- bad data ------------------------------------------------------------------------------------

def _bad_box_fixture(tmp_path):
    return make_voc(tmp_path, {
        "ok": _xml("ok", [_obj("cat", (2, 2, 9, 9))]),
        "out": _xml("out", [_obj("cat", (30, 20, 45, 30)), _obj("dog", (5, 5, 10, 10))]),  # x2 = 45 > 40
        "zero": _xml("zero", [_obj("cat", (5, 5, 4, 9))]),  # xmax = xmin - 1: zero width
        "inv": _xml("inv", [_obj("cat", (9, 5, 2, 9))]),
        "gone": _xml("gone", [_obj("cat", (50, 40, 60, 50))]),  # entirely outside
    })


def test_bad_boxes_default_drop_with_one_summary_warning(tmp_path):
    voc = _bad_box_fixture(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDataset(voc, "trainval")
    bad = [w for w in caught if issubclass(w.category, BadDataWarning)]
    assert len(bad) == 1
    message = str(bad[0].message)
    assert "dropped 4 bad boxes" in message and "2 outside the image" in message
    assert "1 zero area" in message and "1 inverted" in message and "out.xml" in message
    assert [len(ds.get(i).labels) for i in range(len(ds))] == [1, 1, 0, 0, 0]
    assert ds.checker.summary()["dropped"] == {"outside the image": 2, "zero area": 1, "inverted": 1}


def test_bad_boxes_clip(tmp_path):
    voc = _bad_box_fixture(tmp_path)
    with pytest.warns(BadDataWarning, match="clipped 1 boxes"):
        ds = VOCDataset(voc, "trainval", on_bad_box="clip")
    np.testing.assert_array_equal(ds.get(1).boxes, [[29, 19, 40, 30], [4, 4, 10, 10]])
    assert ds.checker.summary()["dropped"] == {"entirely outside the image": 1, "zero area": 1, "inverted": 1}


@pytest.mark.parametrize("image_id, problem", [("out", "outside the image"), ("zero", "zero area"),
                                                ("inv", "inverted")])
def test_bad_boxes_error_names_file_line_and_object(tmp_path, image_id, problem):
    voc = make_voc(tmp_path, {image_id: _xml(image_id, [_obj("cat", (1, 1, 3, 3)),
                                                       _bad_box_obj(image_id)])})
    with pytest.raises(ValueError, match=rf"{image_id}\.xml, line 14, object #1 \('cat'\).*{problem}"):
        VOCDataset(voc, "trainval", on_bad_box="error")


def _bad_box_obj(kind):
    return {"out": _obj("cat", (30, 20, 45, 30)), "zero": _obj("cat", (5, 5, 4, 9)),
            "inv": _obj("cat", (9, 5, 2, 9))}[kind]


def test_unknown_class_is_an_error_or_dropped(tmp_path):
    voc = make_voc(tmp_path, {"u": _xml("u", [_obj("cat", (1, 1, 3, 3)), _obj("unicorn", (2, 2, 5, 5))])})
    with pytest.raises(ValueError, match=r"u\.xml, line 14, object #1 \('unicorn'\).*unknown class name"):
        VOCDataset(voc, "trainval")
    with pytest.warns(BadDataWarning, match="1 'unicorn'"):
        ds = VOCDataset(voc, "trainval", on_unknown_class="drop")
    assert ds.get(0).labels.tolist() == [VOC_CLASSES.index("cat") + 1]


def test_malformed_xml_names_file_and_line(tmp_path):
    voc = make_voc(tmp_path, {"m": "<annotation>\n  <size><width>4</width>\n</annotation>\n"})
    with pytest.raises(ValueError, match=r"m\.xml: malformed XML at line 3"):
        VOCDataset(voc, "trainval")


def test_non_numeric_and_missing_fields(tmp_path):
    voc = make_voc(tmp_path, {"n": _xml("n", [_obj("cat", (1, 1, "ten", 3))])})
    with pytest.raises(ValueError, match=r"n\.xml, line 4, object #0.*numeric"):
        VOCDataset(voc, "trainval")
    voc = make_voc(tmp_path / "b", {"n": _xml("n", ["  <object><name>cat</name></object>\n"])})
    with pytest.raises(ValueError, match="without a <bndbox>"):
        VOCDataset(voc, "trainval")


def test_missing_image_annotation_and_split(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", []), "b": _xml("b", [])})
    os.remove(os.path.join(voc, "JPEGImages", "b.jpg"))
    with pytest.raises(ValueError, match=r"1 image file\(s\) missing: .*b\.jpg"):
        VOCDataset(voc, "trainval")
    ds = VOCDataset(voc, "trainval", check_images=False)
    with pytest.raises(ValueError, match=r"b\.jpg: image file is missing"):
        ds.get(1)
    os.remove(os.path.join(voc, "Annotations", "a.xml"))
    with pytest.raises(ValueError, match=r"a\.xml: annotation file is missing"):
        VOCDataset(voc, "trainval", check_images=False)
    with pytest.raises(ValueError, match=r"test\.txt does not exist"):
        VOCDataset(voc, "test")


def test_unreadable_image_and_size_mismatch(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", []), "b": _xml("b", [])}, image_sizes={"b": (20, 30)})
    with open(os.path.join(voc, "JPEGImages", "a.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    ds = VOCDataset(voc, "trainval")
    with pytest.raises(ValueError, match=r"a\.jpg: cannot read image"):
        ds.get(0)
    with pytest.raises(ValueError, match=r"b\.jpg: image is 20x30 but its annotation says 40x30"):
        ds.get(1)


# --- issue 16: messages that name the file; DataError for an unreadable sample ----------------------

def test_unreadable_samples_raise_data_error_with_the_path(tmp_path):
    from minissd.data import DataError

    voc = make_voc(tmp_path, {"a": _xml("a", []), "b": _xml("b", [])}, image_sizes={"b": (20, 30)})
    jpg = os.path.join(voc, "JPEGImages", "a.jpg")
    data = open(jpg, "rb").read()
    with open(jpg, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated JPEG
    ds = VOCDataset(voc, "trainval")
    with pytest.raises(DataError, match=r"a\.jpg: cannot read image") as info:
        ds.get(0)
    assert info.value.path == jpg
    with pytest.raises(DataError, match="annotation says") as info:
        ds.get(1)
    assert info.value.path.endswith("b.jpg")


def test_16_bit_png_in_a_dataset_is_not_white(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", [])})
    gray = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(gray).save(os.path.join(voc, "JPEGImages", "a.png"))
    os.remove(os.path.join(voc, "JPEGImages", "a.jpg"))
    xml = _xml("a", []).replace("a.jpg", "a.png")
    with open(os.path.join(voc, "Annotations", "a.xml"), "w") as f:
        f.write(xml)
    image = VOCDataset(voc, "trainval").get(0).image
    np.testing.assert_array_equal(image[..., 0], ((gray.astype(np.uint32) + 128) // 257).astype(np.uint8))
    assert image.min() == 0 and image.max() == 252  # 1199 * 54 = 64746 -> round(64746 / 257) = 252


def test_non_utf8_image_list_names_the_file_and_line(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", [])})
    list_path = os.path.join(voc, "ImageSets", "Main", "trainval.txt")
    with open(list_path, "wb") as f:
        f.write(b"a\n\xe9t\xe9\n")  # latin-1 "été"
    with pytest.raises(ValueError, match=r"trainval\.txt: an image list must be UTF-8 text; byte 0xe9 on line 2"):
        VOCDataset(voc, "trainval")
    with open(list_path, "wb") as f:
        f.write(b"\xef\xbb\xbfa\r\n")  # a byte-order mark and CRLF, as a Windows editor writes
    assert VOCDataset(voc, "trainval").ids == ["a"]


def test_non_utf8_class_file_names_the_file(tmp_path):
    voc = make_voc(tmp_path, {"a": _xml("a", [])})
    classes = os.path.join(voc, "classes.txt")
    with open(classes, "wb") as f:
        f.write(b"cat\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"classes\.txt: a class-name file must be UTF-8 text; byte 0xe9 on line 2"):
        VOCDataset(voc, "trainval")


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_split_says_so(tmp_path, content):
    voc = make_voc(tmp_path, {"a": _xml("a", [])})
    with open(os.path.join(voc, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=r"split 'val' of VOCDataset\(.*\) has no images: .*val\.txt lists none"):
        VOCDataset(voc, "val")
    with pytest.raises(ValueError, match="split 'val' .* has no images"):
        open_dataset(f"voc:{voc}", "val")

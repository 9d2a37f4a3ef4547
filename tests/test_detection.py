"""Detection metrics against worked examples computed by hand: region precision, recall, F1, AP, segmentation F1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdcore.detection import (
    Detection,
    average_precision,
    box_iou,
    box_mask,
    detection_figures,
    match_image,
    region_detections,
    segmentation_f1,
)
from kdcore.regions import anomalous_regions


def _split() -> list[tuple[list[Detection], np.ndarray]]:
    """Three 10x10 images (boxes as x0, y0, x1, y1, end exclusive).

    1. Two true regions: A = rows 1-3, columns 1-3 (box 1,1,4,4) and B = rows 6-7, columns 6-8 (box 6,6,9,8).
       P1 (1,1,4,4) 0.9 is A exactly; P2 (1,1,4,5) 0.8 overlaps A again (IoU 9/12) but A is taken: a duplicate;
       P3 (6,6,8,8) 0.6 covers 4 of B's 6 pixels: IoU 4/6.
    2. No true region; P4 (0,0,2,2) 0.7 is a false positive.
    3. One true region C = rows 0-4, columns 0-4; P5 (0,0,2,2) 0.5 holds 4 of its 25 pixels: IoU 0.16.
    """
    one = np.zeros((10, 10), np.uint8)
    one[1:4, 1:4] = 1
    one[6:8, 6:9] = 1
    three = np.zeros((10, 10), np.uint8)
    three[0:5, 0:5] = 1
    return [
        ([Detection(1, 1, 4, 4, 0.9), Detection(1, 1, 4, 5, 0.8), Detection(6, 6, 8, 8, 0.6)], one),
        ([Detection(0, 0, 2, 2, 0.7)], np.zeros((10, 10), np.uint8)),
        ([Detection(0, 0, 2, 2, 0.5)], three),
    ]


def test_iou_rule_worked_example() -> None:
    """Ranked 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.5 FP; 3 true regions.
    Precision 2/5, recall 2/3, F1 2*2 / (2*2 + 3 + 1) = 0.5.
    Curve at each score: recall 1/3, 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 1/3, 1/2, 2/5; monotone envelope
    1, 1/2, 1/2, 1/2, 2/5. All points: 1/3 * 1 + 1/3 * 1/2 = 0.5. COCO 101: recalls 0-0.33 (34 points) read 1,
    0.34-0.66 (33) read 1/2, 0.67-1 (34) read 0: (34 + 16.5) / 101 = 0.5."""
    figures = detection_figures(_split())
    assert (figures.true_positives, figures.predictions, figures.true_regions) == (2, 5, 3)
    assert figures.precision == pytest.approx(0.4) and figures.recall == pytest.approx(2 / 3)
    assert figures.f1 == pytest.approx(0.5) and figures.ap == pytest.approx(0.5)
    assert detection_figures(_split(), interpolation="coco101").ap == pytest.approx(50.5 / 101)
    # A stricter IoU: P3 (4/6) no longer counts, P1 (1.0) still does.
    strict = detection_figures(_split(), iou_threshold=0.7)
    assert strict.true_positives == 1 and strict.ap == pytest.approx(1 / 3)


def test_overlap_rule_worked_example() -> None:
    """P5 now finds C (it holds its pixels); P2 is still a duplicate of A.
    Ranked TP, FP, FP, TP, TP: precision 3/5, recall 1, F1 6 / (6 + 2) = 0.75. Precision 1, 1/2, 1/3, 1/2, 3/5 at
    recall 1/3, 1/3, 1/3, 2/3, 1; envelope 1, 3/5, 3/5, 3/5, 3/5. All points: 1/3 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15.
    COCO 101: 34 points read 1, the other 67 read 3/5: (34 + 40.2) / 101."""
    figures = detection_figures(_split(), rule="overlap")
    assert (figures.true_positives, figures.predictions, figures.true_regions) == (3, 5, 3)
    assert figures.precision == pytest.approx(0.6) and figures.recall == pytest.approx(1.0)
    assert figures.f1 == pytest.approx(0.75) and figures.ap == pytest.approx(11 / 15)
    assert detection_figures(_split(), rule="overlap", interpolation="coco101").ap == pytest.approx(74.2 / 101)


def test_threshold_counts_only_confident_predictions_for_precision_recall_f1() -> None:
    """At 0.65: P1 (TP), P2 (FP), P4 (FP) remain. Precision 1/3, recall 1/3, F1 2 / (2 + 2 + 2); AP is over all."""
    figures = detection_figures(_split(), threshold=0.65)
    assert (figures.true_positives, figures.predictions) == (1, 3)
    assert figures.precision == pytest.approx(1 / 3) and figures.recall == pytest.approx(1 / 3)
    assert figures.f1 == pytest.approx(1 / 3) and figures.ap == pytest.approx(0.5)


def test_matching_is_greedy_by_score_and_one_to_one() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[0:4, 0:4] = 1
    low_but_exact, high_but_loose = Detection(0, 0, 4, 4, 0.6), Detection(0, 0, 5, 5, 0.9)  # IoU 16/25 = 0.64
    match = match_image([low_but_exact, high_but_loose], mask)
    # The higher score takes the region first; the exact box comes second and is a duplicate.
    assert list(match.scores) == [0.9, 0.6] and list(match.true_positive) == [True, False]
    # A box over two true regions finds one of them (the one it overlaps most), not both.
    two = np.zeros((10, 10), np.uint8)
    two[0:2, 0:2] = 1
    two[0:2, 4:8] = 1
    wide = match_image([Detection(0, 0, 8, 2, 0.9)], two, rule="overlap")
    assert list(wide.true_positive) == [True] and wide.true_regions == 2
    with pytest.raises(ValueError, match="overlap rule"):
        match_image([], mask, rule="centre")  # type: ignore[arg-type]


def test_average_precision_edge_cases() -> None:
    # Tied scores enter together: the order among them does not matter (one threshold, precision 1/2, recall 1).
    assert average_precision(np.array([0.8, 0.8]), np.array([False, True]), 1) == pytest.approx(0.5)
    assert average_precision(np.array([0.8, 0.8]), np.array([True, False]), 1) == pytest.approx(0.5)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 2) == 0.0
    assert math.isnan(average_precision(np.array([0.9]), np.array([False]), 0))
    # Perfect ranking of two hits among three true regions: recall 2/3 at precision 1.
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([True, True, False]), 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="interpolation"):
        average_precision(np.zeros(0), np.zeros(0, bool), 1, "voc11")  # type: ignore[arg-type]


def test_undefined_figures_are_nan() -> None:
    empty = np.zeros((4, 4), np.uint8)
    nothing = detection_figures([([], empty)])
    assert all(math.isnan(v) for v in (nothing.precision, nothing.recall, nothing.f1, nothing.ap))
    assert nothing.to_dict()["precision"] is None and nothing.to_dict()["predictions"] == 0
    mask = empty.copy()
    mask[1, 1] = 1
    missed = detection_figures([([], mask)])
    assert math.isnan(missed.precision) and (missed.recall, missed.f1, missed.ap) == (0.0, 0.0, 0.0)


def test_boxes_iou_masks_and_scaling() -> None:
    a, b = Detection(0, 0, 2, 2, 1), Detection(1, 1, 3, 3, 1)
    assert box_iou(a, b) == pytest.approx(1 / 7) and box_iou(a, a) == 1.0
    assert box_iou(a, Detection(5, 5, 5, 9, 1)) == 0.0
    assert Detection.from_xywh(10, 20, 30, 40, 0.5) == Detection(10, 20, 40, 60, 0.5)
    assert Detection(10, 20, 40, 60, 0.5).scaled(0.5, 0.25) == Detection(5, 5, 20, 15, 0.5)
    # A pixel is in a box when its centre is: (0.4, 1.6) holds pixels 0 and 1, (0.6, 1.6) only pixel 1.
    np.testing.assert_array_equal(box_mask([Detection(0.4, 0.4, 1.6, 1.6, 1)], (3, 3)),
                                  [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(box_mask([Detection(0.6, 0.6, 1.6, 9, 1)], (3, 3)), [[0, 0, 0], [0, 1, 0], [0, 1, 0]])
    assert not box_mask([Detection(0, 0, 3, 3, 0.2)], (3, 3), threshold=0.5).any()


def test_segmentation_f1_worked_example() -> None:
    """A 2x2 defect; the map finds 3 of its pixels and one outside: F1 = 2*3 / (2*3 + 1 + 1) = 0.75. The box over
    the defect fills exactly it: F1 1. Over two images of different sizes the pixels are pooled."""
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 0:2] = 1
    amap = np.zeros((4, 4), np.float32)
    amap[0:2, 0:2] = 0.9
    amap[1, 1] = 0.4999
    amap[3, 3] = 0.5
    assert segmentation_f1([mask], [amap]) == pytest.approx(0.75)
    assert segmentation_f1([mask], [box_mask([Detection(0, 0, 2, 2, 0.3)], (4, 4))]) == 1.0
    other = np.zeros((2, 6), np.uint8)
    other[0, 0] = 1  # missed: one more false negative
    assert segmentation_f1([mask, other], [amap, np.zeros((1, 2, 6), np.float32)]) == pytest.approx(6 / 9)
    with pytest.raises(ValueError, match="shape"):
        segmentation_f1([mask], [np.zeros((4, 5))])


def test_regions_of_a_perfect_map_are_perfect_detections() -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[2:6, 3:9] = 1
    mask[20:30, 20:22] = 1
    amap = np.where(mask, 0.9, 0.1).astype(np.float32)
    amap[25, 21] = 0.95
    detections = region_detections(anomalous_regions(amap))
    assert [d.score for d in detections] == [pytest.approx(0.95), pytest.approx(0.9)]
    figures = detection_figures([(detections, mask)])
    assert (figures.precision, figures.recall, figures.f1, figures.ap) == (1.0, 1.0, 1.0, 1.0)
    by_mean = region_detections(anomalous_regions(amap), rank_by="mean")
    assert by_mean[0].score == pytest.approx((19 * 0.9 + 0.95) / 20)


# ---------------------------------------------------------------------------------------------- the boxes file
def _category(root) -> "Path":
    """A tiny MVTec-layout category: 32x32 images, test/good/000.png, test/crack/000.png and 001.png with masks
    (crack/000: rows 4-11, columns 8-15; crack/001: rows 20-23, columns 20-27)."""
    import cv2

    cat = root / "part"
    for folder in ("test/good", "test/crack", "ground_truth/crack"):
        (cat / folder).mkdir(parents=True)
    image = np.full((32, 32, 3), 128, np.uint8)
    for rel in ("test/good/000.png", "test/crack/000.png", "test/crack/001.png"):
        cv2.imwrite(str(cat / rel), image)
    for name, (rows, cols) in {"000": ((4, 12), (8, 16)), "001": ((20, 24), (20, 28))}.items():
        mask = np.zeros((32, 32), np.uint8)
        mask[rows[0]:rows[1], cols[0]:cols[1]] = 255
        cv2.imwrite(str(cat / "ground_truth" / "crack" / f"{name}_mask.png"), mask)
    return cat


def _write(path, payload) -> "Path":
    import json

    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


BAD_BOXES = {
    "no bbox": ([{"image": "a.png", "score": 0.5}], "field 'predictions.0.bbox': Field required"),
    "three numbers": ([{"image": "a.png", "bbox": [1, 2, 3], "score": 0.5}],
                      "field 'predictions.0.bbox': List should have at least 4 items"),
    "negative width": ([{"image": "a.png", "bbox": [1, 2, -3, 4], "score": 0.5}], "predictions.0.bbox': Value error, "
                       "bbox width and height must be > 0"),
    "score NaN": ('[{"image": "a.png", "bbox": [1, 2, 3, 4], "score": NaN}]', "field 'predictions.0.score'"),
    "score text": ([{"image": "a.png", "bbox": [1, 2, 3, 4], "score": "high"}], "field 'predictions.0.score'"),
    "typo": ([{"image": "a.png", "bbx": [1, 2, 3, 4], "score": 0.5}], "field 'predictions.0.bbx': Extra inputs"),
    "both names": ([{"image": "a.png", "image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}],
                   "field 'predictions.0': Value error, give either 'image'"),
    "second entry": ([{"image": "a.png", "bbox": [1, 2, 3, 4], "score": 0.5}, {"image": "", "bbox": [0, 0, 1, 1],
                      "score": 1}], "field 'predictions.1.image'"),
    "not a list": ('"boxes"', "field '<root>'"),
    "images without file names": ({"images": [{"id": 1}], "predictions": []}, "field 'images.0.file_name'"),
    "not JSON": ("[{'image': 'a.png'}]", "not a JSON file"),
}


@pytest.mark.parametrize("name", list(BAD_BOXES))
def test_a_boxes_file_with_a_bad_schema_is_refused_naming_the_field(name: str, tmp_path) -> None:
    from client.evaluation import BoxesFileError, load_boxes

    payload, message = BAD_BOXES[name]
    with pytest.raises(BoxesFileError, match="boxes.json") as refused:
        load_boxes(_write(tmp_path / "boxes.json", payload))
    assert message in str(refused.value)


def test_boxes_name_their_images_by_path_file_name_or_coco_id(tmp_path) -> None:
    from client.evaluation import BoxesFileError, boxes_by_image, evaluation_samples, load_boxes

    cat = _category(tmp_path)
    samples = evaluation_samples(cat)
    plain = _write(tmp_path / "plain.json", [
        {"image": "test/crack/000.png", "bbox": [8, 4, 8, 8], "score": 0.9},
        {"image": "crack/001.png", "bbox": [0, 0, 2, 2], "score": 0.4},
        {"image": str((cat / "test" / "good" / "000.png").resolve()), "bbox": [1, 1, 1, 1], "score": 0.2},
    ])
    got = boxes_by_image(load_boxes(plain), samples, cat)
    assert got[str(cat / "test/crack/000.png")] == [Detection(8, 4, 16, 12, 0.9)]
    assert got[str(cat / "test/crack/001.png")] == [Detection(0, 0, 2, 2, 0.4)]
    assert len(got[str(cat / "test/good/000.png")]) == 1
    coco = _write(tmp_path / "coco.json", {
        "images": [{"id": 7, "file_name": "test/crack/001.png", "width": 32, "height": 32}],
        "predictions": [{"image_id": 7, "category_id": 1, "bbox": [20, 20, 8, 4], "score": 0.8}],
    })
    got = boxes_by_image(load_boxes(coco), samples, cat)
    assert got[str(cat / "test/crack/001.png")] == [Detection(20, 20, 28, 24, 0.8)]
    assert got[str(cat / "test/crack/000.png")] == []
    # 000.png is in good/ and in crack/: a file name alone is ambiguous; an unknown image or id is refused too.
    for payload, message in (
        ([{"image": "000.png", "bbox": [0, 0, 1, 1], "score": 1}], "predictions.0.image': '000.png' names 2 images"),
        ([{"image": "crack/009.png", "bbox": [0, 0, 1, 1], "score": 1}], "predictions.0.image': 'crack/009.png' is not"),
        ({"images": [], "predictions": [{"image_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]},
         "predictions.0.image_id': 3 is not the id"),
    ):
        with pytest.raises(BoxesFileError, match="bad.json") as refused:
            boxes_by_image(load_boxes(_write(tmp_path / "bad.json", payload)), samples, cat, "bad.json")
        assert message in str(refused.value)


def test_detection_metrics_of_regions_and_boxes_in_the_map_frame(tmp_path) -> None:
    """Maps at 16x16 over 32x32 images (half the resolution). crack/000's defect is map rows 2-5, columns 4-7; the
    map finds it exactly, crack/001's defect (map rows 10-11, columns 10-13) is missed and a false region sits on
    good/000. The boxes (image pixels) find crack/000 exactly and crack/001 with a box twice too wide (IoU 0.5:
    still a hit), and one low-scoring box sits on good/000.
    Regions: 2 predictions, 1 TP, 2 true regions: precision 1/2, recall 1/2, F1 2/(2+1+1) = 1/2; AP: peak 0.9 (TP)
    then 0.7 (FP): recall 1/2 at precision 1: 1/2. Segmentation F1: 16 true pixels found, 4 false, 8 missed:
    32/(32+4+8) = 8/11.
    Boxes at 0.5: the good image's 0.3 box does not count: precision 1, recall 1, F1 1; AP over all three: 1.
    Filled boxes: crack/000 exact (16), crack/001 16 pixels for 8: 24 TP, 8 FP: 48/56 = 6/7."""
    from client.evaluation import boxes_by_image, detection_metrics, evaluation_samples, load_boxes
    from client.results import ImageResult

    cat = _category(tmp_path)
    samples = evaluation_samples(cat)
    maps = {p: np.full((1, 16, 16), 0.1, np.float32) for p in ("test/good/000.png", "test/crack/000.png",
                                                                 "test/crack/001.png")}
    maps["test/crack/000.png"][0, 2:6, 4:8] = 0.9
    maps["test/good/000.png"][0, 0:2, 0:2] = 0.7
    results = {str(cat / p): ImageResult(path=str(cat / p), status="ok", score=0.5, raw_score=0.0, label="anomalous",
                                         width=32, height=32, anomaly_map=m) for p, m in maps.items()}
    boxes = boxes_by_image(load_boxes(_write(tmp_path / "b.json", [
        {"image": "test/crack/000.png", "bbox": [8, 4, 8, 8], "score": 0.9},
        {"image": "test/crack/001.png", "bbox": [16, 20, 16, 4], "score": 0.6},
        {"image": "test/good/000.png", "bbox": [0, 0, 4, 4], "score": 0.3},
    ])), samples, cat)
    report = detection_metrics(samples, results, boxes=boxes)
    ours, theirs = report["regions"], report["boxes"]
    assert (ours["predictions"], ours["true_positives"], ours["true_regions"]) == (2, 1, 2)
    assert (ours["precision"], ours["recall"], ours["f1"], ours["ap"]) == (0.5, 0.5, 0.5, 0.5)
    assert ours["segmentation_f1"] == pytest.approx(8 / 11)
    assert (theirs["predictions"], theirs["true_positives"]) == (2, 2)
    assert (theirs["precision"], theirs["recall"], theirs["f1"], theirs["ap"]) == (1.0, 1.0, 1.0, 1.0)
    assert theirs["segmentation_f1"] == pytest.approx(6 / 7)
    assert report["rule"] == "iou" and report["frame"] == "served map, 16x16 px" and report["boxes_threshold"] == 0.5
    # The overlap rule changes nothing here but the name; without boxes there is no second column.
    assert detection_metrics(samples, results, rule="overlap")["boxes"] is None


def test_compare_boxes_refuses_a_bad_file_before_scoring(tmp_path, capsys) -> None:
    from client.client import main as client_main

    cat = _category(tmp_path)
    bad = _write(tmp_path / "boxes.json", [{"image": "test/crack/000.png", "bbox": [1, 2, 3], "score": 0.5}])
    with pytest.raises(SystemExit) as leaving:  # the server address is never reached: the file is refused first
        client_main(["score", "--evaluate", str(cat), "--compare-boxes", str(bad), "-u", "127.0.0.1:9",
                     "-o", str(tmp_path / "out"), "--no-progress"])
    assert leaving.value.code == 2
    err = capsys.readouterr().err
    assert "--compare-boxes" in err and "field 'predictions.0.bbox'" in err
    with pytest.raises(SystemExit):
        client_main(["score", str(cat), "--compare-boxes", str(bad), "-o", str(tmp_path / "out")])
    assert "needs --evaluate" in capsys.readouterr().err


def test_detection_metrics_take_each_maps_own_frame(tmp_path) -> None:
    """A map that is not square (a tiled frame's): the mask is resized to it, boxes scale per axis. 32x32 images,
    16x32 maps (half the rows): crack/000's defect is map rows 2-5, columns 8-15; the box (image rows 4-11) lands on
    it exactly."""
    from client.evaluation import boxes_by_image, detection_metrics, evaluation_samples, load_boxes, served_metrics
    from client.results import ImageResult

    cat = _category(tmp_path)
    samples = evaluation_samples(cat)
    maps = {str(s.path): np.full((16, 32), 0.1, np.float32) for s in samples}
    maps[str(cat / "test/crack/000.png")][2:6, 8:16] = 0.8
    results = {p: ImageResult(path=p, status="ok", score=0.5, raw_score=0.0, label="anomalous", width=32, height=32,
                              anomaly_map=m) for p, m in maps.items()}
    boxes = boxes_by_image(load_boxes(_write(tmp_path / "b.json", [
        {"image": "test/crack/000.png", "bbox": [8, 4, 8, 8], "score": 0.9}])), samples, cat)
    report = detection_metrics(samples, results, boxes=boxes)
    assert report["frame"] == "served map, 32x16 px"
    for figures in (report["regions"], report["boxes"]):
        assert (figures["true_positives"], figures["predictions"], figures["true_regions"]) == (1, 1, 2)
        assert figures["segmentation_f1"] == pytest.approx(2 * 32 / (2 * 32 + 16))  # crack/001's 16 px missed
    results[str(cat / "test/good/000.png")].anomaly_map = np.zeros((8, 8), np.float32)
    assert detection_metrics(samples, results)["frame"] == "served maps"
    with pytest.raises(ValueError, match="differ in size"):
        served_metrics(samples, results)

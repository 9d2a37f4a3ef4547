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

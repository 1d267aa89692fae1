"""Prediction: page images -> regions (polygons) -> PAGE-XML, overlays.

- :mod:`.predictor`: :class:`Predictor` (load, detect, to_page) and
  :func:`detections_to_page`;
- :mod:`.vectorize`: mask probabilities -> polygons, merging, reading order;
- :mod:`.overlay`: regions drawn over their page.

The command line is ``python -m maskdla.predict`` (:mod:`maskdla.predict`).
"""
from maskdla.prediction.predictor import (IMAGE_SUFFIXES, Predictor, detections_to_page,
                                          load_image, page_to_coco_results)

__all__ = ["IMAGE_SUFFIXES", "Predictor", "detections_to_page", "load_image",
           "page_to_coco_results"]

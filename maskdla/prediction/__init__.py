"""Prediction: page images -> regions (polygons) and text lines -> PAGE-XML, ALTO, overlays.

- :mod:`.predictor`: :class:`Predictor` (load, detect, to_page) and
  :func:`detections_to_page`, post-processed by the settings of :class:`PostProcess`;
- :mod:`.pipeline`: :class:`PagePipeline`, a region model and a line model together;
- :mod:`.vectorize`: mask probabilities -> polygons, merging;
- :mod:`.order`: reading order by layout (columns, running titles, margins);
- :mod:`.baselines`: a line model's detections -> text lines with baselines;
- :mod:`.lines`: text lines into their regions;
- :mod:`.overlay`: regions, lines and baselines drawn over their page.

The command line is ``python -m maskdla.predict`` (:mod:`maskdla.predict`).
"""
from maskdla.prediction.predictor import (IMAGE_SUFFIXES, PostProcess, Predictor,
                                          detections_to_page, load_image,
                                          page_to_coco_results)
from maskdla.prediction.pipeline import PagePipeline

__all__ = ["IMAGE_SUFFIXES", "PagePipeline", "PostProcess", "Predictor", "detections_to_page",
           "load_image", "page_to_coco_results"]

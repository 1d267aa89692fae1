"""Data in and out: PAGE-XML, ALTO, COCO JSON, the training Dataset and the synthetic corpus.

Names are imported on first use (PEP 562), so ``import maskdla.data`` stays cheap for
the command-line tools that only read or write XML.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "Page": "maskdla.data.page",
    "Region": "maskdla.data.page",
    "TextLine": "maskdla.data.page",
    "training_size": "maskdla.data.resize",
    "read_page": "maskdla.data.pagexml",
    "write_page": "maskdla.data.pagexml",
    "page_to_xml": "maskdla.data.pagexml",
    "read_alto": "maskdla.data.alto",
    "write_alto": "maskdla.data.alto",
    "alto_to_xml": "maskdla.data.alto",
    "read_layout": "maskdla.data.layout",
    "collect_layout_files": "maskdla.data.layout",
    "parse_class_map": "maskdla.data.reading",
    "RepairReport": "maskdla.data.reading",
    "pages_to_coco": "maskdla.data.coco",
    "folder_to_coco": "maskdla.data.coco",
    "coco_to_pages": "maskdla.data.coco",
    "load_coco": "maskdla.data.coco",
    "Dataset": "maskdla.data.dataset",
    "View": "maskdla.data.dataset",
    "GroupedBatchSampler": "maskdla.data.dataset",
    "collate_fn": "maskdla.data.dataset",
    "aspect_ratio_groups": "maskdla.data.dataset",
    "generate_corpus": "maskdla.data.synthetic",
    "default_corpus": "maskdla.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__

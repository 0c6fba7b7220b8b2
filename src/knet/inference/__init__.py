"""Running models on images: the test pipeline (with its model-runner interface), the
:class:`~knet.inference.segmenter.Segmenter` and the pictures (colour maps, overlays)."""

"""Semantic segmentation: an offline real-image scene data set, training and mIoU (issue 19)."""

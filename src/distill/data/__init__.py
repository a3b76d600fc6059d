"""Loaders for the offline data sets (shared/DATA.md) and for users' own files."""

from distill.data.images import ImageData, ImageSplits, load_images

__all__ = ["ImageData", "ImageSplits", "load_images"]

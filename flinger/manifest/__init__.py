"""The package manifest: which packages exist, how they are built, and who gets them."""

from flinger.manifest.loader import load_manifest
from flinger.manifest.model import Manifest, Package

__all__ = ["Manifest", "Package", "load_manifest"]

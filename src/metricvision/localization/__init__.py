"""Localization methods that find a queried object in an image, side by side in one registry (``LOCALIZERS``)."""
from metricvision.localization.localizers import LOCALIZERS  # noqa: F401 (registers them all, whichever module comes first)

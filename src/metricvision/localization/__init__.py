"""Localization methods that find a queried object in an image, side by side in one registry (``LOCALIZERS``)."""

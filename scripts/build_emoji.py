"""Build the built-in emoji dataset file from the emoji-datasource npm packages.

    python scripts/build_emoji.py                      # google + twitter, 40 px, into the package
    python scripts/build_emoji.py --vendors google,twitter,apple --size 48 --out /tmp/e.npz

The same code backs `metricvision data fetch emoji` (metricvision.data.emoji_build).
"""
from metricvision.data.emoji_build import main

if __name__ == "__main__":
    raise SystemExit(main())

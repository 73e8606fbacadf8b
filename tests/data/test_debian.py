"""Licences read from unpacked Debian packages (usr/share/doc/<package>/copyright)."""
from metricvision.data.debian import package_licences


def test_package_licences_reads_license_fields(tmp_path):
    doc = tmp_path / "usr" / "share" / "doc" / "fonts-x"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2020 A\nLicense: OFL-1.1\n\nFiles: debian/*\nLicense: GPL-2+\n\n"
        "License: OFL-1.1\n This Font Software is licensed under the SIL Open Font License, Version 1.1.\n"
    )
    assert package_licences(tmp_path, ["fonts-x", "absent"]) == {"fonts-x": "OFL-1.1, GPL-2+", "absent": "see its copyright file"}

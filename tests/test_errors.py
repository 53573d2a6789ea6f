"""ichdemo.errors: the typed errors the CLI and the UI show as one line."""

from ichdemo.errors import UnsupportedInputError


def test_library_errors_are_one_line_whatever_the_input_put_in_them():
    err = UnsupportedInputError("CT0001.dcm: colour DICOM image (\n, 1 samples per pixel)\r\n  more")
    assert str(err) == "CT0001.dcm: colour DICOM image ( , 1 samples per pixel) more"

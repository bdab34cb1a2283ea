"""cgnet.images: one decoder that shows a photo as every viewer does (EXIF orientation applied),
checked against Pillow's own ImageOps.exif_transpose for each of the eight orientations."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from cgnet.common import InputError
from cgnet.images import decode_rgb, exif_orientation, read_rgb


def photo_bytes(orientation: int, fmt: str = "JPEG") -> bytes:
    # a stored 2 x 3 frame of distinct blocks (JPEG's 8x8 blocks blur less when each is 16 px)
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:16, :16] = (255, 0, 0)
    stored[:16, 16:32] = (0, 255, 0)
    stored[:16, 32:] = (0, 0, 255)
    stored[16:, :16] = (255, 255, 0)
    stored[16:, 16:32] = (0, 255, 255)
    stored[16:, 32:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(stored).save(out, fmt, exif=exif.tobytes(), **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoded_pixels_equal_pillows_exif_transpose(orientation, fmt, tmp_path):
    data = photo_bytes(orientation, fmt)
    assert exif_orientation(data) == orientation
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = decode_rgb(data)
    assert got.shape == expected.shape == ((48, 32, 3) if orientation >= 5 else (32, 48, 3))
    # the same decoded pixels turned: equal up to the two libraries' JPEG decoders (IDCT rounding,
    # chroma upsampling), which can differ by a few levels; lossless formats are equal exactly
    tolerance = 0 if fmt == "PNG" else 40
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance
    # the block colours land where the viewer shows them (a turned frame would fail by 255)
    centres = got[8::16, 8::16].astype(int)
    assert np.array_equal(np.abs(centres - expected[8::16, 8::16].astype(int)) < 40, np.ones_like(centres, bool))
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    assert np.array_equal(read_rgb(path), got)


def test_no_tag_and_unknown_bytes_mean_upright():
    assert exif_orientation(photo_bytes(1)) == 1
    assert exif_orientation(b"not an image") == 1


def test_undecodable_bytes_are_one_line_naming_the_place():
    with pytest.raises(InputError) as err:
        decode_rgb(b"\x89PNG\r\n\x1a\n broken", where="upload.png")
    assert str(err.value) == "upload.png: cannot decode the image (corrupt, truncated or not an image)"

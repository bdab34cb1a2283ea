"""Phone photos: JPEGs whose stored pixels are turned by an EXIF orientation tag (1-8), built with
Pillow from the frame a viewer shows, and that frame's expected colours."""
import io

import numpy as np
from PIL import Image

# Pillow's turn for each orientation (what ImageOps.exif_transpose applies to show a photo) and
# the inverse turn, which makes the stored frame from the shown one
SHOWN_BY = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
STORED_BY = {**SHOWN_BY, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}

# the colours of the shown frame's 2 x 4 blocks (rows of blocks top to bottom): no turn or mirror
# of the frame puts the same colour in any block
BLOCKS = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)],
                   [(0, 255, 255), (255, 0, 255), (255, 255, 255), (0, 0, 0)]], dtype=np.uint8)


def shown_frame(height: int, width: int) -> np.ndarray:
    """height x width x 3 RGB: BLOCKS stretched over the frame."""
    rows = np.arange(height) * BLOCKS.shape[0] // height
    cols = np.arange(width) * BLOCKS.shape[1] // width
    return BLOCKS[rows[:, None], cols[None, :]]


def phone_jpeg(shown: np.ndarray, orientation: int) -> bytes:
    """A JPEG (quality 95) whose stored pixels, turned by its EXIF `orientation`, are `shown`."""
    image = Image.fromarray(shown)
    if orientation in STORED_BY:
        image = image.transpose(STORED_BY[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def stored_size(shown_height: int, shown_width: int, orientation: int) -> tuple[int, int]:
    """(height, width) of the stored pixels."""
    return (shown_width, shown_height) if orientation >= 5 else (shown_height, shown_width)


def block_centres(rgb: np.ndarray) -> np.ndarray:
    """The colour at the centre of each of the 2 x 4 blocks of an H x W x 3 frame, as int."""
    height, width = rgb.shape[:2]
    ys = [int((i + 0.5) * height / BLOCKS.shape[0]) for i in range(BLOCKS.shape[0])]
    xs = [int((j + 0.5) * width / BLOCKS.shape[1]) for j in range(BLOCKS.shape[1])]
    return rgb[np.ix_(ys, xs)].astype(int)


def shows_blocks(rgb: np.ndarray) -> bool:
    """True when each block centre has its shown colour, within JPEG's error (well under the
    255 a turned frame would be off by)."""
    return bool(np.abs(block_centres(rgb) - BLOCKS.astype(int)).max() <= 40)

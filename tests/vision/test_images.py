"""load_image on the files people actually have: rotated, gray, alpha, CMYK, 16-bit, broken."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from captionlab.errors import UserError
from captionlab.vision.images import MAX_PIXELS, list_image_files, load_image, load_images

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def halves(w, h, first, second, axis="x"):
    """Image with the first colour on the left (or top) half and the second on the other."""
    a = np.zeros((h, w, 3), np.uint8)
    if axis == "x":
        a[:, : w // 2], a[:, w // 2 :] = first, second
    else:
        a[: h // 2], a[h // 2 :] = first, second
    return Image.fromarray(a)


def is_close(pixel, colour, tol=40):
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


def test_plain_rgb_shape_and_centre_crop(tmp_path):
    a = np.zeros((30, 90, 3), np.uint8)
    a[:, :30], a[:, 30:60], a[:, 60:] = RED, GREEN, BLUE
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.flags.writeable
    assert is_close(out[8, 8], GREEN, tol=0)  # the centre band survives the crop
    assert is_close(out[8, 1], GREEN, tol=60)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    img = halves(40, 20, RED, BLUE)  # red left, blue right as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90-degree clockwise turn: left goes to top
    img.save(tmp_path / f"rot{suffix}", exif=exif, quality=95)
    img.save(tmp_path / f"plain{suffix}", quality=95)
    rotated = load_image(tmp_path / f"rot{suffix}", size=20)
    plain = load_image(tmp_path / f"plain{suffix}", size=20)
    assert is_close(rotated[2, 10], RED) and is_close(rotated[17, 10], BLUE)
    assert is_close(plain[10, 2], RED) and is_close(plain[10, 17], BLUE)


def test_grayscale_and_bilevel(tmp_path):
    Image.fromarray(np.full((20, 20), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", 8)
    assert np.all(out == 77)
    Image.new("1", (20, 20), 1).save(tmp_path / "b.bmp")
    assert np.all(load_image(tmp_path / "b.bmp", 8) == 255)


def test_rgba_and_palette_transparency_composite_on_white(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[:, :10] = (*RED, 255)  # opaque red left, fully transparent right
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 20)
    assert is_close(out[10, 2], RED, tol=0) and is_close(out[10, 17], (255, 255, 255), tol=0)
    pal = Image.fromarray(a, mode="RGBA").convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = pal.getpixel((15, 10))
    pal.save(tmp_path / "p.png", transparency=pal.getpixel((15, 10)))
    out = load_image(tmp_path / "p.png", 20)
    assert is_close(out[10, 17], (255, 255, 255), tol=0) and is_close(out[10, 2], RED)


def test_cmyk(tmp_path):
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert is_close(load_image(tmp_path / "c.tif", 8)[4, 4], RED, tol=0)
    assert is_close(load_image(tmp_path / "c.jpg", 8)[4, 4], RED)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    a = np.zeros((20, 30), np.uint16)
    a[:, 10:20], a[:, 20:] = 128 * 257, 65535
    Image.fromarray(a).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_image(tmp_path / "deep.png", 20)  # centre crop keeps columns 5..25
    assert tuple(out[10, 0]) == (0, 0, 0)
    assert tuple(out[10, 10]) == (128, 128, 128)
    assert tuple(out[10, 19]) == (255, 255, 255)


def test_truncated_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"t\.png: corrupt or truncated"):
        load_image(tmp_path / "t.png")


def test_non_image_missing_and_folder(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    with pytest.raises(UserError, match=r"notes\.jpg: not an image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(UserError, match=r"absent\.png: image file not found"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(UserError, match="got a folder"):
        load_image(tmp_path)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _bomb(path, side):
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit gray, declared size only
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    data += _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)


def test_decompression_bomb_refused_from_header(tmp_path):
    _bomb(tmp_path / "bomb.png", 10_000)  # 100 megapixels declared; the file is tiny
    assert 10_000**2 > MAX_PIXELS
    with pytest.raises(UserError, match=r"bomb\.png: image of 10000x10000 = 100000000 pixels"):
        load_image(tmp_path / "bomb.png")
    _bomb(tmp_path / "huge.png", 30_000)  # past Pillow's own hard limit: refused on open
    with pytest.raises(UserError, match=r"huge\.png: refused as a decompression bomb"):
        load_image(tmp_path / "huge.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="exceeds the limit of 1000 pixels"):
        load_image(tmp_path / "small.png", max_pixels=1000)


def test_list_image_files_and_load_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ["b.PNG", "a.jpg", "sub/c.png", ".hidden/d.png", ".e.png"]:
        Image.new("RGB", (10, 10), RED).save(tmp_path / rel, format="PNG")
    (tmp_path / "readme.txt").write_text("x")
    found = list_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "b.PNG", "sub/c.png"]
    assert len(list_image_files(tmp_path, recursive=False)) == 2
    batch = load_images(found, size=6)
    assert batch.shape == (3, 6, 6, 3) and np.all(batch[..., 0] == 255)
    with pytest.raises(UserError, match="expected a folder"):
        list_image_files(tmp_path / "nope")

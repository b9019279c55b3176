"""Decoding every kind of image file a user may have, and indexing a folder full of bad ones.

All files are made here by code (Pillow, or crafted bytes), so each test knows exactly what the
pixels should be after decoding.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefinder import ImageFinder, build_index
from imagefinder.index import Store
from imagefinder.ingest.decode import ImageError, open_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --- makers ------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _textured(size: tuple[int, int], seed: int) -> Image.Image:
    """A busy RGB image (smooth gradients + noise): compresses to many KB, decodes to real content."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    noisy = base + rng.normal(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _upright_quadrant(w: int = 60, h: int = 100) -> Image.Image:
    """What the viewer should see: a red top-left quadrant on blue."""
    img = Image.new("RGB", (w, h), BLUE)
    img.paste(RED, (0, 0, w // 2, h // 2))
    return img


def _exif_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """Store `upright` the way a camera would for `orientation`, with the EXIF tag saying so."""
    stored = {
        1: upright,
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),  # viewers rotate 90 deg clockwise to show it
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored, "JPEG", exif=exif.tobytes(), quality=95)


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height` (valid CRC, so only the size is wrong)."""
    raw = bytearray(_encode(Image.new("1", (8, 8)), "PNG"))
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), GREEN), Image.new("RGB", (32, 32), BLUE)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _rgba_half_transparent() -> bytes:
    img = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent *black*
    img.paste((0, 128, 0, 255), (0, 0, 20, 20))  # opaque green left half
    return _encode(img, "PNG")


def _palette_transparent() -> bytes:
    img = Image.new("P", (40, 20), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 0, 20, 20))  # left half index 1 (red-ish), right half index 0 = transparent black
    return _encode(img, "PNG", transparency=0)


def _gray16() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    return _encode(Image.fromarray(ramp), "PNG")


def _cmyk() -> bytes:
    img = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan ink
    img.paste((0, 0, 0, 255), (0, 0, 16, 32))  # black ink on the left
    return _encode(img, "JPEG", quality=95)


def _truncated_jpeg() -> bytes:
    data = _encode(_textured((320, 240), 1), "JPEG")
    return data[: len(data) // 2]


BAD_FILES = {
    # name: (bytes maker, expected reason prefix)
    "corrupt_truncated.jpg": (_truncated_jpeg, "corrupt or truncated image"),
    "empty.jpg": (lambda: b"", "empty file (0 bytes)"),
    "random_bytes.png": (lambda: np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                         "not a recognised image format"),
    "bomb_30000x30000.png": (lambda: _png_bomb(30000, 30000), "decompression bomb refused"),
}

GOOD_FILES = {
    "textured.jpg": lambda: _encode(_textured((320, 240), 2), "JPEG", quality=90),
    "cmyk.jpg": _cmyk,
    "rgba.png": _rgba_half_transparent,
    "palette_trns.png": _palette_transparent,
    "gray16.png": _gray16,
    "animated.gif": _animated_gif,
    "exif6.jpg": lambda: _exif_jpeg(_upright_quadrant(), 6),
    "exif3.jpg": lambda: _exif_jpeg(_upright_quadrant(), 3),
    "one_pixel.png": lambda: _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
    "sub/nested.webp": lambda: _encode(_textured((64, 48), 3), "WEBP"),
}


def _close(pixel: tuple, expected: tuple, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# --- open_image, file by file ---------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours() -> None:
    data = _cmyk()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    d = open_image(data)
    assert d.image.mode == "RGB" and (d.width, d.height) == (32, 32) == d.image.size
    assert _close(d.image.getpixel((24, 16)), (0, 255, 255))  # cyan
    assert _close(d.image.getpixel((4, 16)), (0, 0, 0))  # black


def test_rgba_png_transparent_area_is_composited_on_white() -> None:
    d = open_image(_rgba_half_transparent())
    assert d.image.mode == "RGB" and d.image.size == (40, 20)
    assert d.image.getpixel((5, 10)) == (0, 128, 0)
    assert d.image.getpixel((35, 10)) == WHITE, "transparent black must show as white, not black"


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    data = _palette_transparent()
    assert Image.open(io.BytesIO(data)).mode == "P"
    d = open_image(data)
    assert d.image.mode == "RGB"
    assert d.image.getpixel((5, 10)) == (200, 30, 30)
    assert d.image.getpixel((35, 10)) == WHITE


def test_rgb_png_with_transparent_colour_key_is_composited_on_white() -> None:
    img = Image.new("RGB", (20, 10), (1, 2, 3))
    img.paste(RED, (0, 0, 10, 10))
    data = _encode(img, "PNG", transparency=(1, 2, 3))
    assert "transparency" in Image.open(io.BytesIO(data)).info
    d = open_image(data)
    assert d.image.getpixel((2, 5)) == RED
    assert d.image.getpixel((15, 5)) == WHITE


def test_16bit_grayscale_png_is_scaled_to_8bit_rgb() -> None:
    data = _gray16()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    d = open_image(data)
    assert d.image.mode == "RGB" and d.image.size == (64, 16)
    arr = np.asarray(d.image)
    assert arr[:, 0].max() <= 2, "0 stays black"
    assert arr[:, -1].min() >= 253, "65535 becomes white, not clipped garbage"
    row = arr[8, :, 0].astype(int)
    assert (np.diff(row) >= 0).all(), "the ramp stays monotonic"
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all(), "grey stays grey"


def test_animated_gif_uses_the_first_frame() -> None:
    data = _animated_gif()
    assert Image.open(io.BytesIO(data)).n_frames == 3
    d = open_image(data)
    assert d.image.mode == "RGB" and d.image.size == (32, 32)
    assert _close(d.image.getpixel((16, 16)), RED, tol=4)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_gives_upright_pixels_and_size(orientation: int) -> None:
    upright = _upright_quadrant(60, 100)
    d = open_image(_exif_jpeg(upright, orientation))
    assert d.image.size == (60, 100), "decoded image must be upright (portrait)"
    assert (d.width, d.height) == (60, 100), "recorded size is what the viewer sees"
    assert _close(d.image.getpixel((15, 25)), RED), "red quadrant must be top-left"
    for xy in [(45, 25), (15, 75), (45, 75)]:
        assert _close(d.image.getpixel(xy), BLUE), f"{xy} must be blue"


def test_exif_orientation_6_with_jpeg_draft_reports_the_full_upright_size() -> None:
    """The pipeline decodes big JPEGs at reduced scale; the recorded size must still be the real one."""
    upright = _upright_quadrant(800, 1200)
    d = open_image(_exif_jpeg(upright, 6), draft_size=256)
    assert (d.width, d.height) == (800, 1200)
    w, h = d.image.size
    assert h > w and 256 <= w < 800, "drafted, but portrait and never below the draft size"
    assert _close(d.image.getpixel((w // 4, h // 4)), RED)
    assert _close(d.image.getpixel((3 * w // 4, 3 * h // 4)), BLUE)


@pytest.mark.parametrize("size", [(30000, 30000), (12000, 12000)])
def test_decompression_bomb_is_refused_before_decoding(size: tuple[int, int]) -> None:
    data = _png_bomb(*size)
    assert len(data) < 200
    with pytest.raises(ImageError, match="decompression bomb refused"):
        open_image(data)


def test_bomb_header_below_the_limit_is_not_called_a_bomb() -> None:
    """Control for the bomb test: same crafted file with a sane size decodes (it is 8x8 all along)."""
    d = open_image(_png_bomb(8, 8))
    assert d.image.size == (8, 8)


def test_one_pixel_image() -> None:
    d = open_image(_encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert (d.width, d.height) == (1, 1) and d.image.getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_image_error_with_reason(name: str) -> None:
    make, reason = BAD_FILES[name]
    with pytest.raises(ImageError) as err:
        open_image(make())
    assert str(err.value).startswith(reason)


def test_missing_file_and_directory_are_image_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path / "dir.jpg")


def test_sha256_is_of_the_file_bytes_and_path_equals_bytes(tmp_path: Path) -> None:
    data = GOOD_FILES["textured.jpg"]()
    (tmp_path / "a.jpg").write_bytes(data)
    from_path, from_bytes = open_image(tmp_path / "a.jpg"), open_image(data)
    assert from_path.sha256 == from_bytes.sha256 == hashlib.sha256(data).hexdigest()
    assert np.array_equal(np.asarray(from_path.image), np.asarray(from_bytes.image))


# --- a whole folder of them through build_index ---------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for name, make in {**GOOD_FILES, **{n: m for n, (m, _) in BAD_FILES.items()}}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
    (root / "notes.txt").write_text("not an image; must be ignored by the folder walk")
    return root


@pytest.fixture(scope="module")
def zoo_index(zoo: Path, embedder, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("zoo-index") / "index"
    report = build_index([str(zoo)], out, embedder=embedder, batch_size=4, workers=3)
    return out, report


def test_folder_index_finishes_and_counts_match(zoo: Path, zoo_index) -> None:
    out, report = zoo_index
    n_images = len(GOOD_FILES) + len(BAD_FILES)
    assert (report.items, report.indexed, report.failed) == (n_images, len(GOOD_FILES), len(BAD_FILES))
    finder = ImageFinder(out)
    try:
        info = finder.info()
        assert info["counts"]["items"] == n_images
        assert info["counts"]["indexed"] == len(GOOD_FILES)
        assert info["counts"]["failed"] == len(BAD_FILES)
        assert finder.store.ntotal == len(GOOD_FILES)
        expected_reasons = {reason: 1 for _, reason in BAD_FILES.values()}
        assert report.failure_reasons == expected_reasons
        assert info["failure_reasons"] == expected_reasons
        assert {f["source"] for f in info["failures"]} == {str(zoo / n) for n in BAD_FILES}
    finally:
        finder.close()


def test_folder_index_records_each_failure_with_its_reason(zoo: Path, zoo_index) -> None:
    out, _ = zoo_index
    store = Store(out)
    try:
        failures = {Path(f["source"]).name: f for f in store.failures()}
        assert set(failures) == set(BAD_FILES)
        for name, (_, reason) in BAD_FILES.items():
            assert failures[name]["status"] == "failed"
            assert failures[name]["error"].startswith(reason), failures[name]["error"]
            assert failures[name]["cluster"] is None
            assert not store.thumbnail_path(failures[name]["id"]).exists()
        ok = store.ids_by_source()
        assert {Path(s).relative_to(zoo).as_posix() for s in ok} == set(GOOD_FILES)
        assert "notes.txt" not in {Path(s).name for s in ok}
        rows = store.records(list(ok.values()))
        for source, item_id in ok.items():
            row = rows[item_id]
            assert row["status"] == "ok" and row["error"] is None
            assert row["sha256"] == hashlib.sha256(Path(source).read_bytes()).hexdigest()
            assert Image.open(store.thumbnail_path(item_id)).format == "JPEG"
        by_name = {Path(s).name: rows[i] for s, i in ok.items()}
        assert (by_name["exif6.jpg"]["width"], by_name["exif6.jpg"]["height"]) == (60, 100)
        assert (by_name["exif3.jpg"]["width"], by_name["exif3.jpg"]["height"]) == (60, 100)
        assert (by_name["one_pixel.png"]["width"], by_name["one_pixel.png"]["height"]) == (1, 1)
        assert (by_name["textured.jpg"]["width"], by_name["textured.jpg"]["height"]) == (320, 240)
        # failed items have zero feature rows, good ones real features
        emb = np.asarray(store.embeddings, np.float32)
        assert all(not emb[f["id"]].any() for f in failures.values())
        assert all(np.linalg.norm(emb[i]) > 0 for i in ok.values())
    finally:
        store.close()


def test_search_on_the_folder_index_finds_the_image_and_never_a_failed_one(zoo: Path, zoo_index) -> None:
    out, _ = zoo_index
    finder = ImageFinder(out)
    try:
        results = finder.search(zoo / "textured.jpg", k=50)
        assert len(results) == len(GOOD_FILES), "k above the index size returns every indexed image"
        assert Path(results[0].source).name == "textured.jpg" and results[0].score > 0.999
        failed_ids = {f["id"] for f in finder.info()["failures"]}
        assert failed_ids and not failed_ids & {r.id for r in results}
        # the upright EXIF image and a freshly made upright copy (no EXIF) look the same to the model
        upright = _upright_quadrant()
        top = finder.search(upright, k=2)
        assert {Path(r.source).name for r in top} == {"exif6.jpg", "exif3.jpg"}
        with pytest.raises(KeyError):
            finder.search_id(next(iter(failed_ids)))
    finally:
        finder.close()

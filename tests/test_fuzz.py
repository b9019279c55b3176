"""Property-based fuzzing of the parsers and decoders that read untrusted input (bounded, reproducible).

Strategies and properties live in tests/fuzzing.py, shared with benchmarks/fuzz.py (the long
runs). Here each property gets a fixed number of derandomized examples, so CI sees the same
inputs every run; the @example cases are failures the fuzzer found once, kept as regressions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzing import (
    MutatedImage,
    TextDoc,
    check_csv,
    check_decode,
    check_list,
    check_upload,
    csv_documents,
    list_documents,
    mutated_images,
    seed_images,
    small_pixel_limit,
)
from hypothesis import HealthCheck, example, given, settings

from imagefinder.ingest.decode import ImageError, open_image

# Pillow warns (UserWarning) about the corrupt EXIF and truncated tags it skips: expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEEDS = seed_images()
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-sources")


@pytest.fixture(scope="module", autouse=True)
def pixel_limit() -> Iterator[None]:
    with small_pixel_limit():
        yield


# --- sources ---------------------------------------------------------------------------------------------


@FUZZ
@given(doc=csv_documents())
# found by this test: a NUL byte in a path cell made Path.resolve() raise a bare ValueError
@example(doc=TextDoc(b"url,id\nphotos/a\x00.jpg,1\n", frozenset()))
# found by the long run (benchmarks/fuzz.py): a blank line before the header made the header a
# data row and the first column the location column, so every URL in a later column was lost
@example(doc=TextDoc(b"\r\nid,url\r\n1,http://a.example/x.jpg\r\n", frozenset({"http://a.example/x.jpg"})))
# found by the long run: '~nosuchuser/a.jpg' (or '~' and a newline in a quoted cell) made
# Path.expanduser raise RuntimeError("Could not determine home directory")
@example(doc=TextDoc(b'url\n~nosuchuser-fuzz/a.jpg\n"~\n x"\n', frozenset()))
def test_csv_returns_items_from_the_file_or_source_error(doc: TextDoc, workdir: Path) -> None:
    check_csv(doc, workdir)


@FUZZ
@given(doc=list_documents())
@example(doc=TextDoc(b"http://a.example/1.jpg\n\x00\n", frozenset({"http://a.example/1.jpg"})))
# found by this test: a list file with a BOM (Notepad's "UTF-8 with BOM") lost its first URL to a
# bogus path '<folder>/\ufeffhttp:/...', and a BOM before a blank line became an item '<folder>/\ufeff'
@example(doc=TextDoc(b"\xef\xbb\xbfhttp://a.example/1.jpg\r\n", frozenset({"http://a.example/1.jpg"})))
@example(doc=TextDoc(b"\xef\xbb\xbf\n", frozenset()))
def test_list_file_returns_items_from_the_file_or_source_error(doc: TextDoc, workdir: Path) -> None:
    check_list(doc, workdir)


def test_the_source_property_can_fail(workdir: Path) -> None:
    """A URL the file lists must be returned: the property notices when one is not."""
    doc = TextDoc(b"url\nhttp://a.example/1.jpg\n", frozenset({"http://a.example/2.jpg"}))
    with pytest.raises(AssertionError, match="not returned"):
        check_csv(doc, workdir)


# --- images ----------------------------------------------------------------------------------------------


def test_every_seed_decodes() -> None:
    """The unmutated seeds are valid files of every format: fuzzing starts from real images."""
    assert {"jpeg", "png", "gif-animated", "webp", "tiff", "bmp"} <= set(SEEDS)
    for name, data in SEEDS.items():
        assert check_decode(data) == "decoded", name
        assert check_upload(data) == "accepted", name


@FUZZ
@given(image=mutated_images(SEEDS))
def test_decode_gives_an_rgb_image_or_image_error(image: MutatedImage) -> None:
    check_decode(image.data)


@FUZZ
@given(image=mutated_images(SEEDS))
def test_upload_check_gives_an_image_or_a_4xx(image: MutatedImage) -> None:
    check_upload(image.data)


def test_a_truncated_seed_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        open_image(SEEDS["png"][:40])
    assert check_decode(SEEDS["png"][:40]) == "ImageError"


def test_the_decode_property_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception other than ImageError is never swallowed by the property: it fails the test."""
    import fuzzing

    def broken(data: bytes, draft_size: int | None = None) -> None:
        raise KeyError("a decoder bug")

    monkeypatch.setattr(fuzzing, "open_image", broken)
    with pytest.raises(KeyError):
        check_decode(SEEDS["jpeg"])

"""Resolution-aware input, presets, region queries (--box) and match confidence, on real images.

The small index is 40 UKBench photos; the region tests use paris266 photos (1024 px, mixed
aspect ratios) where the shapes of a batch differ.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imagefinder.embed import Embedder
from imagefinder.ingest.decode import Preprocess, to_array
from imagefinder.region import BoxError, crop_box, parse_box

PARIS = Path(__file__).resolve().parents[2] / "shared/data/paris266/images"
PHOTOS = ["paris_defense_000000.jpg", "paris_defense_000006.jpg", "paris_eiffel_000004.jpg"]


def paris(name: str) -> Path:
    if not (PARIS / name).is_file():
        pytest.skip(f"paris266 data not found at {PARIS}")
    return PARIS / name


def noise_png(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """An unrelated query: uniform colour noise, nothing like any photo."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --- input: aspect ratio kept, mixed shapes batched ---------------------------------------------


def test_long_side_resize_keeps_the_aspect_ratio_in_stride_multiples() -> None:
    img = Image.new("RGB", (1024, 683))
    arr = to_array(img, Preprocess(size=512, resize="long"))
    assert arr.shape == (3, 352, 512)  # 683 * 512/1024 = 341.5 -> nearest multiple of 32
    assert to_array(Image.new("RGB", (600, 900)), Preprocess(size=384, resize="long")).shape == (3, 384, 256)
    assert to_array(img, Preprocess(size=224)).shape == (3, 224, 224)  # the square squash is unchanged


def test_mixed_shapes_in_one_batch_equal_one_image_at_a_time(imagefinder_cache: Path) -> None:
    embedder = Embedder("efficientnet-lite0@long320")
    images = [Image.open(paris(n)).convert("RGB") for n in PHOTOS] + [Image.open(paris(PHOTOS[0])).rotate(90, expand=True)]
    prepared = [embedder.prepare(im) for im in images]
    assert len({p[0][0].shape for p in prepared}) >= 3, "the test needs several shapes in the batch"
    batch = embedder.embed_prepared(prepared)
    single = np.concatenate([embedder.embed_prepared([p]) for p in prepared])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-5)


def test_the_input_is_recorded_and_queries_use_the_recorded_one(tmp_path: Path, ukbench_dir: Path) -> None:
    from imagefinder import build_index
    from imagefinder.finder import ImageFinder
    from imagefinder.index import IndexConfig, read_manifest
    from imagefinder.index.manifest import write_manifest

    images = [str(ukbench_dir / "images" / f"ukbench{n:05d}.jpg") for n in range(8)]
    built = build_index(images, tmp_path / "long", IndexConfig(model="efficientnet-lite0@long320"), workers=2)
    pre = read_manifest(built.path).members[0]["preprocess"]
    assert (pre["resize"], pre["size"]) == ("long", 320)
    finder = ImageFinder(built.path)
    assert finder.embedder.preprocesses[0] == Preprocess.from_dict(pre)
    # An index recorded with the square squash (every index before) keeps it, whatever the defaults are.
    manifest = read_manifest(built.path)
    old = [{**manifest.members[0], "preprocess": {**pre, "resize": "squash", "size": 224}}]
    write_manifest(built.path, manifest.replace(members=old))
    assert ImageFinder(built.path).embedder.preprocesses[0].resize == "squash"
    # ... and a member recorded without preprocessing gets the backbone's native square input.
    write_manifest(built.path, manifest.replace(members=[{k: v for k, v in old[0].items() if k != "preprocess"}]))
    native = ImageFinder(built.path).embedder.preprocesses[0]
    assert (native.resize, native.size) == ("squash", 224)


def test_bad_input_options_say_what_is_wrong() -> None:
    from imagefinder.models import ModelUnavailable
    from imagefinder.models.registry import parse_members

    with pytest.raises(ModelUnavailable, match="input size"):
        parse_members("efficientnet-lite0@long9")
    with pytest.raises(ModelUnavailable, match="fixed"):
        parse_members("dinov2-s@long512")


# --- region queries -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    ("1,2,3", "four numbers"), ("a,b,c,d", "numbers"), ("10,10,5,20", "X0 < X1"), ("0,0,inf,5", "finite"),
])
def test_malformed_boxes_are_refused(text: str, words: str) -> None:
    with pytest.raises(BoxError, match=words):
        parse_box(text)


def test_boxes_must_fit_the_image_and_scale_with_a_drafted_decode() -> None:
    img = Image.new("RGB", (400, 300))
    with pytest.raises(BoxError, match="does not fit in the 400x300"):
        crop_box(img, parse_box("0,0,401,10"))
    with pytest.raises(BoxError, match="too small"):
        crop_box(img, parse_box("0,0,4,100"))
    assert crop_box(img, (100, 50, 300, 250)).size == (200, 200)
    # pixels of the 800x600 original, image decoded at half size
    assert crop_box(img, (200, 100, 600, 500), (800, 600)).size == (200, 200)


def test_search_box_equals_searching_with_the_cropped_file(cli, small_index, tmp_path: Path) -> None:
    query = small_index.sources[5]
    box = (40, 30, 280, 210)
    Image.open(query).crop(box).save(tmp_path / "crop.png")
    boxed = cli("search", small_index.path, query, "--box", ",".join(map(str, box)), "--json", "-k", "5")
    cropped = cli("search", small_index.path, tmp_path / "crop.png", "--json", "-k", "5")
    assert boxed.returncode == 0, boxed.stderr
    a, b = json.loads(boxed.stdout), json.loads(cropped.stdout)
    assert [r["id"] for r in a["results"]] == [r["id"] for r in b["results"]]
    np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]], atol=1e-5)
    bad = cli("search", small_index.path, query, "--box", "0,0,9999,10")
    assert bad.returncode == 2 and "does not fit" in bad.stderr and "Traceback" not in bad.stderr


# --- match confidence -----------------------------------------------------------------------------


def test_a_known_image_matches_strongly_and_noise_only_weakly(small_index) -> None:
    from imagefinder.finder import ImageFinder

    finder = ImageFinder(small_index.path)
    same = finder.search(small_index.sources[3], k=5)
    assert same[0].match == "strong" and same[0].source == small_index.sources[3]
    assert {r.match for r in same} <= {"strong", "weak"}
    for seed in range(3):
        noise = finder.search(noise_png(seed), k=10)
        assert len(noise) == 10 and all(r.match == "weak" for r in noise), [(r.score, r.match) for r in noise]


def test_cli_says_no_close_match_for_an_unrelated_query(cli, small_index, tmp_path: Path) -> None:
    (tmp_path / "noise.png").write_bytes(noise_png(7))
    out = cli("search", small_index.path, tmp_path / "noise.png", "-k", "3")
    assert out.returncode == 0 and "no close match" in out.stdout, out.stdout
    js = json.loads(cli("search", small_index.path, tmp_path / "noise.png", "--json", "-k", "3").stdout)
    assert [r["match"] for r in js["results"]] == ["weak"] * 3


# --- presets ----------------------------------------------------------------------------------------


def test_index_records_the_preset_and_search_uses_its_query_time_parts(cli, small_index, tmp_path: Path,
                                                                       monkeypatch) -> None:
    from imagefinder.finder import ImageFinder
    from imagefinder.index import read_manifest
    from imagefinder.presets import DEFAULT_PRESET, PRESETS

    images = tmp_path / "images"
    images.mkdir()
    for s in small_index.sources[:8]:
        shutil.copyfile(s, images / Path(s).name)
    built = cli("index", images, "--out", tmp_path / "idx", "--json")
    assert built.returncode == 0, built.stderr
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.config.preset == PRESETS[DEFAULT_PRESET].to_dict()
    assert manifest.model == PRESETS[DEFAULT_PRESET].model
    finder = ImageFinder(tmp_path / "idx")
    assert finder.query_options() == PRESETS[DEFAULT_PRESET].query_options()
    assert finder.query_options("accurate")["rerank"] == PRESETS["accurate"].rerank
    assert finder.query_options("accurate", rerank=0)["rerank"] == 0  # an explicit option wins
    both = cli("index", images, "--out", tmp_path / "idx2", "--preset", "fast", "--model", "efficientnet-lite0")
    assert both.returncode == 2 and "--preset fast chooses" in both.stderr
    unknown = cli("search", tmp_path / "idx", small_index.sources[0], "--preset", "best")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    # the preset's expansion does not apply to euclidean: a plain euclidean search, not an error
    assert finder.query_options(metric="euclidean")["qe"] == 0 < PRESETS[DEFAULT_PRESET].qe
    plain = ImageFinder(tmp_path / "idx").search(small_index.sources[0], k=3, metric="euclidean", qe=0)
    assert [r.id for r in finder.search(small_index.sources[0], k=3, metric="euclidean")] == [r.id for r in plain]
    with pytest.raises(ValueError, match="euclidean"):  # asked for by name, it is refused
        finder.search(small_index.sources[0], k=3, metric="euclidean", qe=2)
    asked = cli("search", tmp_path / "idx", small_index.sources[0], "--metric", "euclidean", "--qe", "2")
    assert asked.returncode == 2 and "--qe works with --metric cosine or fusion" in asked.stderr


def test_a_presets_verification_is_dropped_for_euclidean_and_kept_when_asked() -> None:
    from imagefinder.presets import PRESETS, resolve_query_options

    accurate = PRESETS["accurate"]
    assert resolve_query_options(accurate, "vote", {})["rerank"] == accurate.rerank
    assert resolve_query_options(accurate, "euclidean", {}) | {"rerank_budget": None} == {
        "qe": 0, "qe_alpha": accurate.qe_alpha, "rerank": 0, "rerank_budget": None, "vqe": 0}
    assert resolve_query_options(accurate, "euclidean", {"rerank": 5})["rerank"] == 5  # the search refuses it
    assert resolve_query_options(None, "cosine", {"qe": 1})["qe"] == 1


# --- the API: box, preset and match in POST /search ---------------------------------------------------


@pytest.fixture(scope="module")
def api_client(small_index):
    from imagefinder.api import Settings, create_app
    from imagefinder.api.testing import start_asgi

    server = start_asgi(create_app(small_index.path, Settings(cors_origins=())))
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
            yield client
    finally:
        server.stop()


def test_api_search_takes_a_box_and_a_preset_and_says_match(api_client: httpx.Client, small_index) -> None:
    data = Path(small_index.sources[5]).read_bytes()
    whole = api_client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": "3"})
    boxed = api_client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")},
                            data={"k": "3", "box": "40,30,280,210", "preset": "fast"})
    assert whole.status_code == boxed.status_code == 200, boxed.text
    assert whole.json()["results"][0]["match"] == "strong"
    assert boxed.json()["results"][0]["score"] != whole.json()["results"][0]["score"]
    bad = api_client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"box": "0,0,5000,10"})
    assert bad.status_code == 422 and "does not fit" in bad.json()["detail"]
    by_id = api_client.post("/search", json={"id": 1, "box": [0, 0, 10, 10]})
    assert by_id.status_code == 422 and "box" in by_id.json()["detail"]
    noise = api_client.post("/search", files={"file": ("n.png", noise_png(3), "image/png")}, data={"preset": "fast"})
    assert noise.status_code == 200 and {r["match"] for r in noise.json()["results"]} == {"weak"}
    assert api_client.post("/search", json={"id": 1, "preset": "best"}).status_code == 422


def test_the_fast_preset_is_the_model_default() -> None:
    from imagefinder.models import DEFAULT_MODEL
    from imagefinder.presets import PRESETS

    assert PRESETS["fast"].model == DEFAULT_MODEL


def test_a_rerank_budget_of_none_still_means_no_budget(small_index) -> None:
    from imagefinder.finder import ImageFinder

    finder = ImageFinder(small_index.path)
    assert finder.query_options(rerank_budget=None)["rerank_budget"] is None
    assert finder.query_options()["rerank_budget"] == 2.0
    assert finder.query_options("accurate")["rerank_budget"] == finder.query_options("accurate", qe=1)["rerank_budget"]


def test_evaluate_with_a_preset_prints_the_same_keys(cli, ukbench_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = ["filename,group_id"]
    for n in range(8):
        shutil.copyfile(ukbench_dir / "images" / f"ukbench{n:05d}.jpg", data / "images" / f"{n}.jpg")
        rows.append(f"{n}.jpg,{n // 4}")
    (data / "groundtruth.csv").write_text("\n".join(rows) + "\n")
    default = cli("evaluate", data, "--json")
    fast = cli("evaluate", data, "--preset", "fast", "--qe", "1", "--json")
    assert default.returncode == fast.returncode == 0, default.stderr + fast.stderr
    keys = json.loads(default.stdout.strip().splitlines()[-1]).keys()
    assert keys == json.loads(fast.stdout.strip().splitlines()[-1]).keys()
    assert {"map", "ns_score", "images_per_second"} <= set(keys)


def test_each_backbone_has_its_measured_default_input() -> None:
    from imagefinder.models import get_backbone

    lite0, lite2 = get_backbone("efficientnet-lite0").input(), get_backbone("efficientnet-lite2").input()
    assert (lite0.resize, lite0.size) == ("squash", 224)  # today's default is unchanged
    assert (lite2.resize, lite2.size) == ("long", 384)
    assert get_backbone("efficientnet-lite2").input(("square", 260)).resize == "squash"

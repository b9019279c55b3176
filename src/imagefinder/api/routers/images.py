"""/images: the originals and thumbnails, what the index records, adding and removing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ...ingest.decode import sniff_image_type
from ..errors import ERRORS, WRITE_ERRORS
from ..params import ADD_FORM, ImageId, json_body, openapi_body
from ..schemas import AddedImage, AddRequest, AddResponse, DeleteResponse, ImageInfo
from ..service import ServiceDep
from ..uploads import CheckedImage, client_filename, parse_form

router = APIRouter(tags=["images"])

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff"}
# nosniff: a browser takes the Content-Type (from the decoded format) as it is, so a file that is
# also HTML (a GIF+HTML polyglot) is never rendered as a page of this origin
CACHED = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}


@router.get("/images/{image_id}", name="image", responses={**ERRORS, 200: {
    "content": {t: {} for t in MEDIA_TYPES.values()}, "description": "the original image file"}},
    response_class=Response, summary="The original image file")
def image(image_id: ImageId, service: ServiceDep) -> Response:
    row = service.live_record(image_id)
    path = Path(row.get("cached_path") or "")
    if not row.get("cached_path") or not path.is_file():
        raise HTTPException(404, f"the original of image {image_id} is no longer available on the server "
                                 "(its thumbnail is)")
    with open(path, "rb") as f:
        kind = sniff_image_type(f.read(12))
    return FileResponse(path, media_type=MEDIA_TYPES.get(kind or "", "application/octet-stream"), headers=CACHED)


@router.get("/images/{image_id}/thumbnail", name="thumbnail", response_class=Response,
            responses={**ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most 256 px"}},
            summary="A small JPEG of an indexed image")
def thumbnail(image_id: ImageId, service: ServiceDep) -> Response:
    service.live_record(image_id)
    path = service.finder.store.thumbnail_path(image_id)
    if not path.is_file():
        raise HTTPException(404, f"image {image_id} has no thumbnail")
    return FileResponse(path, media_type="image/jpeg", headers=CACHED)


@router.get("/images/{image_id}/info", response_model=ImageInfo, responses=ERRORS,
            summary="What the index records about an image")
def image_info(request: Request, image_id: ImageId, service: ServiceDep) -> ImageInfo:
    return service.image_info(request, service.live_record(image_id))


@router.post("/images", response_model=AddResponse, status_code=201, responses={
    **WRITE_ERRORS, 200: {"model": AddResponse, "description": "every image was already indexed"}},
    summary="Add images to the index (upload or URL)",
    openapi_extra=openapi_body(AddRequest, ADD_FORM, "uploaded image(s) (multipart), or JSON with `url`"))
async def add_images(request: Request, service: ServiceDep) -> Response:
    """Add by upload (multipart field `file`, may repeat) or by `{"url": ...}`.

    The image is visible to the next search and kept across restarts. Adding an image
    that is already indexed returns its existing id with `created: false` (status 200).
    """
    settings = service.settings
    body, kind = await service.request_body(request)
    images: list[tuple[CheckedImage, dict[str, str]]] = []
    if kind == "multipart/form-data":
        form = await parse_form(request, body, max_files=settings.max_files)
        uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
        if not uploads:
            raise HTTPException(422, "the form needs a 'file' field holding the image to add")
        for upload in uploads:
            data = await upload.read()
            name = client_filename(upload.filename) or ""
            image = await service.cpu(service.check, data, f"the file '{name}'" if name else "the file")
            images.append((image, {"filename": name} if name else {}))
    elif kind == "application/json":
        req = json_body(body, AddRequest)
        images.append((await service.fetch(req.url), {"origin": req.url}))
    else:
        raise HTTPException(415, "send multipart/form-data with a 'file' field (an image), or application/json "
                                 "with 'url'")
    added = await run_in_threadpool(service.writer.add, images)
    payload = AddResponse(images=[AddedImage(**service.image_info(request, row).model_dump(), created=created)
                                  for row, created in added])
    status = 201 if any(created for _, created in added) else 200
    return JSONResponse(payload.model_dump(mode="json"), status_code=status)


@router.delete("/images/{image_id}", response_model=DeleteResponse, responses=WRITE_ERRORS,
               summary="Remove an image from the index")
def delete_image(image_id: ImageId, service: ServiceDep) -> DeleteResponse:
    if not service.writer.remove(image_id):
        raise HTTPException(404, f"no indexed image with id {image_id}")
    return DeleteResponse(id=image_id, removed=True)

"""``POST /read``: image files in (multipart or JSON base64, as /predict), one reading of the number written on each out."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api import query
from service.api.errors import ERRORS
from service.api.predict import BODY
from service.dependencies import serving_handler
from service.handler import DigitClassifier
from service.reader import NumberReader
from service.schemas import ReadQuery, ReadResponse
from service.uploads import read_request

__all__ = ["router"]

router = APIRouter(tags=["read"])


@router.post("/read", response_model=ReadResponse, responses=ERRORS, openapi_extra=BODY | {"parameters": query.parameters(ReadQuery)})
async def read(request: Request, handler: Annotated[DigitClassifier, Depends(serving_handler)]) -> Response:
    """Read the number written on each image, left to right: its text, and every digit with its box.

    Takes the same bodies as /predict, within the same limits, and fails the same way. Each
    image's ink is split into digits (strokes that overlap horizontally are one digit; a
    glyph wide enough to be two touching digits is also offered cut in two, and the model
    picks the reading it is surest of); every candidate digit of every image is classified
    in one batched call. Pieces that are not digits (is_digit false: a point, a comma, a
    dash, a sign) are listed in digits but left out of text. A blank image reads "".
    """
    name = handler.model(query.parse(request, ReadQuery).model)
    request.state.model = name
    reader = NumberReader(handler)
    segmentations = await reader.segment(await read_request(request, handler.settings))
    request.state.images = len(segmentations)
    response = await reader.read(name, segmentations)
    # Already validated: serialised once in pydantic-core instead of FastAPI re-validating.
    return Response(response.model_dump_json(), media_type="application/json")

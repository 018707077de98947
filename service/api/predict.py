"""``POST /predict``: image files in (multipart or JSON base64), one prediction per image out."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service import tracing
from service.api import query
from service.api.errors import ERRORS
from service.connections import departure_of
from service.dependencies import serving_handler
from service.handler import DigitClassifier, encode_predictions
from service.schemas import PredictQuery, PredictResponse
from service.uploads import read_request

__all__ = ["router"]

router = APIRouter(tags=["predict"])

# /predict parses its own body (multipart or JSON), so its schema is written here. No
# maxItems: the contract answers too many images with 413, not a schema violation's 422.
BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}},
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSONRequest"}},
        },
    }
}


@router.post(
    "/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=BODY | {"parameters": query.parameters(PredictQuery)}
)
async def predict(request: Request, handler: Annotated[DigitClassifier, Depends(serving_handler)]) -> Response:
    """Classify one or more digit images (multipart parts named `files`, or JSON base64)."""
    options = query.parse(request, PredictQuery)
    name = handler.model(options.model)
    request.state.model = name
    images = await handler.decode(await read_request(request, handler.settings))
    request.state.images = len(images.pixels)
    result = await handler.predict(name, images, departure_of(request.scope))
    with tracing.span("encode"):
        response = encode_predictions(name, result, images.pixels if options.include_input else None)
        # Already validated: serialised once in pydantic-core instead of FastAPI re-validating.
        return Response(response.model_dump_json(), media_type="application/json")

"""The model repository extension (as Triton's): new weights from the weights directory without a restart.

Off unless ``DIGITS_MODEL_CONTROL=explicit`` (as Triton's ``--model-control-mode``), and behind
the API key when one is set: these routes change what every client is answered with.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from core.errors import InputError
from service.api.v2 import served_model
from service.dependencies import get_handler, require_api_key
from service.handler import DigitClassifier
from service.schemas import V2Error, V2RepositoryEntry, V2RepositoryLoaded
from service.tensors import MODEL_VERSION

__all__ = ["router"]


async def require_model_control(request: Request) -> None:
    if request.app.state.settings.model_control != "explicit":
        raise InputError("the model repository is read-only: start the server with DIGITS_MODEL_CONTROL=explicit to load models", 403)


router = APIRouter(
    prefix="/v2/repository",
    tags=["v2 repository"],
    dependencies=[Depends(require_model_control), Depends(require_api_key)],
    responses={401: {"model": V2Error}, 403: {"model": V2Error}},
)
Handler = Annotated[DigitClassifier, Depends(get_handler)]
Model = Annotated[str, Depends(served_model)]


@router.post("/index", response_model=list[V2RepositoryEntry])
async def index(handler: Handler) -> list[V2RepositoryEntry]:
    """Every model, its state and the weights it serves."""
    return [V2RepositoryEntry(version=MODEL_VERSION, **entry) for entry in await handler.backend.repository_index()]


@router.post("/models/{name}/load", response_model=V2RepositoryLoaded, responses={400: {"model": V2Error}})
async def load(name: Model, handler: Handler) -> V2RepositoryLoaded:
    """Re-read the weights directory and serve what changed once it is verified; refused (400) otherwise, the old weights serving on."""
    swapped = await handler.load(name)
    return V2RepositoryLoaded(name=name, swapped=swapped)


@router.post("/models/{name}/unload", response_model=V2RepositoryLoaded)
async def unload(name: Model, handler: Handler) -> V2RepositoryLoaded:
    """Stop serving ``name`` (404 until loaded again)."""
    await handler.backend.unload(name)
    return V2RepositoryLoaded(name=name, swapped=[])

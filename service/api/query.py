"""The query strings of the routes that run a model, validated by one pydantic model each.

FastAPI resolves each declared query parameter and dependency on every request with work
that costs more than the validation itself (bench/README.md, "Design decisions"). These
routes read their query as they read their body: ``parse`` validates it in pydantic-core,
and ``parameters`` documents it in the OpenAPI schema from the same model, as FastAPI would.
"""

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

__all__ = ["parameters", "parse"]

Query = TypeVar("Query", bound=BaseModel)


def parse(request: Request, model: type[Query]) -> Query:
    """The request's query as ``model``; a bad value is the 422 a declared query parameter gives."""
    try:
        return model.model_validate(request.query_params)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]) from None


def parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """``model``'s fields as OpenAPI query parameters, for a route's ``openapi_extra``."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": field, "description": field.get("description", "")}
        for name, field in schema["properties"].items()
    ]

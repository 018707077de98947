"""The client's response models against the server's OpenAPI schema, so the two cannot drift apart.

The client (``digits_client.models``) has its own pydantic models rather than the server's.
For each response it reads, every field its model declares must

- exist in the server's schema of that response, with a type whose every value the client
  accepts (an integer where the client takes a number is fine; a null the client does not
  take, or a bound stricter than the server's, is not), and
- be required by the server wherever the client requires it.

A client field the server's schema lacks passes only when it is optional with a None default:
the client then works against servers that never send it, and the check keeps passing once
the server declares it (as with ``is_digit`` and ``digit_score``, which servers add to a
prediction). Fields only the server declares are fine: the client keeps them unvalidated.
"""

from typing import Any

import pytest
from pydantic import BaseModel, Field

import digits_client.models
from digits_client.models import ModelInfoResponse, PredictResponse, ReadResponse
from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS

Schema = dict[str, Any]

# The response each client model reads: (method, path) of the server's operation, status 200.
READS: dict[type[BaseModel], tuple[str, str]] = {
    PredictResponse: ("post", "/predict"),
    ReadResponse: ("post", "/read"),
    ModelInfoResponse: ("get", "/model-info"),
}

_TYPE_KEYS = ("type", "anyOf", "oneOf", "allOf", "enum", "const", "properties", "items", "$ref")
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems")


class Document:
    """A JSON schema document (an OpenAPI description, or a model's schema with its $defs) that resolves local $refs."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Schema) -> Schema:
        while True:
            if "$ref" in node:
                reference = node["$ref"]
                assert reference.startswith("#/"), f"only local references are resolved, not {reference}"
                target: Any = self.root
                for part in reference[2:].split("/"):
                    target = target[part.replace("~1", "/").replace("~0", "~")]
                node = target
            elif len(node.get("allOf", ())) == 1:  # a reference wrapped to carry a description
                node = node["allOf"][0]
            else:
                return node

    def alternatives(self, node: Schema) -> list[Schema]:
        """The schema as a union: anyOf/oneOf members, and one member per listed type."""
        node = self.resolve(node)
        members = node.get("anyOf", node.get("oneOf"))
        if members is not None:
            return [alternative for member in members for alternative in self.alternatives(member)]
        if isinstance(node.get("type"), list):
            return [{**node, "type": one} for one in node["type"]]
        return [node]


def model_drift(client_model: type[BaseModel], server: Document, server_schema: Schema) -> list[str]:
    """Every way ``client_model`` disagrees with the server's ``server_schema`` (resolved in ``server``); empty when compatible."""
    client = Document(client_model.model_json_schema(mode="validation"))
    return _object_drift(client, client.root, server, server.resolve(server_schema), client_model.__name__)


def _object_drift(client: Document, client_node: Schema, server: Document, server_node: Schema, where: str) -> list[str]:
    problems: list[str] = []
    server_fields: Schema = server_node.get("properties", {})
    server_required = set(server_node.get("required", ()))
    client_required = set(client_node.get("required", ()))
    for name, field in client_node.get("properties", {}).items():
        at = f"{where}.{name}"
        if name not in server_fields:
            if name in client_required or "default" not in field or field["default"] is not None:
                problems.append(f"{at}: the server's schema lacks it, and only a field optional with a None default may be missing")
            continue
        if name in client_required and name not in server_required:
            problems.append(f"{at}: the client requires it, the server may leave it out")
        problems += _value_drift(client, field, server, server_fields[name], at)
    return problems


def _value_drift(client: Document, client_node: Schema, server: Document, server_node: Schema, where: str) -> list[str]:
    """How values the server may send fail the client: each server alternative needs a client alternative that takes it."""
    client_alternatives = client.alternatives(client_node)
    problems: list[str] = []
    for server_alternative in server.alternatives(server_node):
        attempts = [(_alternative_drift(client, c, server, server_alternative, where), c) for c in client_alternatives]
        if any(not drift for drift, _ in attempts):
            continue
        same_type = [drift for drift, c in attempts if _accepts_type(c, server_alternative)]
        problems += (
            same_type[0]
            if same_type
            else [
                f"{where}: the server may send {_describe(server_alternative)}, "
                f"the client takes {' or '.join(_describe(c) for c in client_alternatives)}"
            ]
        )
    return problems


def _alternative_drift(client: Document, taker: Schema, server: Document, sent: Schema, where: str) -> list[str]:
    if _is_any(taker):
        return []
    if _is_any(sent):
        return [f"{where}: the server may send any value, the client takes only {_describe(taker)}"]
    if not _accepts_type(taker, sent):
        return [f"{where}: the server may send {_describe(sent)}, the client takes {_describe(taker)}"]
    problems: list[str] = []
    if "enum" in taker or "const" in taker:
        taken = taker.get("enum", [taker.get("const")])
        offered = sent.get("enum", [sent["const"]] if "const" in sent else None)
        if offered is None or not all(value in taken for value in offered):
            problems.append(f"{where}: the client takes only {taken}, the server may send {offered or 'any ' + str(sent.get('type'))}")
    for key in _LOWER_BOUNDS:
        if key in taker and not (key in sent and sent[key] >= taker[key]):
            problems.append(f"{where}: the client demands {key} {taker[key]}, the server promises {sent.get(key, 'none')}")
    for key in _UPPER_BOUNDS:
        if key in taker and not (key in sent and sent[key] <= taker[key]):
            problems.append(f"{where}: the client demands {key} {taker[key]}, the server promises {sent.get(key, 'none')}")
    if sent.get("type") == "array":
        problems += _value_drift(client, taker.get("items", {}), server, sent.get("items", {}), f"{where}[]")
    if sent.get("type") == "object":
        if "properties" in taker:
            problems += _object_drift(client, taker, server, sent, where)
        else:  # a mapping: every value the server may put in the object must suit the client's value type
            values_taken = taker.get("additionalProperties", True)
            if values_taken is not True and not _is_any(values_taken):
                values_sent = list(sent.get("properties", {}).values())
                extra = sent.get("additionalProperties", True)
                if extra is not False:
                    values_sent.append({} if extra is True else extra)
                for value in values_sent:
                    problems += _value_drift(client, values_taken, server, value, f"{where}{{}}")
    return problems


def _is_any(node: Schema) -> bool:
    return not any(key in node for key in _TYPE_KEYS)


def _accepts_type(taker: Schema, sent: Schema) -> bool:
    return _is_any(taker) or taker.get("type") == sent.get("type") or (taker.get("type") == "number" and sent.get("type") == "integer")


def _describe(node: Schema) -> str:
    if _is_any(node):
        return "any value"
    return str(node.get("title") if node.get("type") == "object" and "properties" in node else node.get("type", node))


# The client against this server -------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> Schema:
    return create_app(Settings(weights_dir=WEIGHTS)).openapi()


@pytest.mark.parametrize("client_model", list(READS), ids=lambda model: model.__name__)
def test_the_client_reads_what_the_server_promises(client_model: type[BaseModel], openapi: Schema) -> None:
    method, path = READS[client_model]
    response = openapi["paths"][path][method]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    assert model_drift(client_model, Document(openapi), schema) == []


def test_every_client_model_is_checked() -> None:
    """A model added to digits_client.models must be reachable from a response in READS, or it escapes the check."""
    checked = {model.__name__ for model in READS}
    for model in READS:
        checked |= set(model.model_json_schema().get("$defs", {}))
    declared = {
        name
        for name, value in vars(digits_client.models).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == digits_client.models.__name__
    }
    assert declared - {"_Response"} <= checked


def test_the_digit_judgement_is_optional_for_the_client() -> None:
    """is_digit and digit_score may come from a server or not: never required, None by default.

    Whether this server declares them or not, the check above then passes; once it does, their
    types are checked like any other field's.
    """
    fields = digits_client.models.Prediction.model_fields
    for name in ("is_digit", "digit_score"):
        assert not fields[name].is_required() and fields[name].default is None


# The check itself, on small models ----------------------------------------------------


class ServerItem(BaseModel):
    label: int = Field(ge=0, le=9)
    score: float | None = None
    tags: list[str]
    extra: dict[str, int]


class ServerAnswer(BaseModel):
    name: str
    items: list[ServerItem]


def server_of(model: type[BaseModel]) -> tuple[Document, Schema]:
    document = Document(model.model_json_schema(ref_template="#/$defs/{model}"))
    return document, document.root


def drift_of(client_model: type[BaseModel]) -> list[str]:
    return model_drift(client_model, *server_of(ServerAnswer))


def test_a_faithful_and_tolerant_client_passes() -> None:
    class Item(BaseModel):
        label: float  # the server's integers are numbers too
        score: float | None = None
        tags: list[str] | None = None  # required on the server: optional here is fine
        extra: dict[str, float]
        is_new: bool | None = None  # unknown to this server, optional with a None default

    class Answer(BaseModel):  # "name" left out: fields the client does not read are fine
        items: list[Item]

    assert drift_of(Answer) == []


@pytest.mark.parametrize(
    ("annotation", "default", "message"),
    [
        (bool, ..., "lacks it"),  # a field the server does not declare, required by the client
        (bool, False, "lacks it"),  # ... or with a default other than None
        (bool | None, ..., "lacks it"),  # ... or nullable but still required
    ],
)
def test_a_field_the_server_lacks_must_be_optional_with_none(annotation: Any, default: Any, message: str) -> None:
    namespace = {"__annotations__": {"name": str, "is_new": annotation}}
    if default is not ...:
        namespace["is_new"] = default
    client_model = type("Answer", (BaseModel,), namespace)
    problems = drift_of(client_model)
    assert len(problems) == 1 and "Answer.is_new" in problems[0] and message in problems[0]


def test_type_nullability_requiredness_and_bounds_are_checked() -> None:
    class Item(BaseModel):
        label: int = Field(ge=0, le=5)  # stricter than the server's 0..9
        score: float  # required here, optional and nullable on the server
        tags: list[int]  # the server sends strings
        extra: dict[str, str]  # the server's values are integers

    class Answer(BaseModel):
        name: int
        items: list[Item]

    problems = drift_of(Answer)
    assert any(p.startswith("Answer.name:") and "string" in p for p in problems)
    assert any(p.startswith("Answer.items[].label:") and "maximum 5" in p for p in problems)
    assert any(p.startswith("Answer.items[].score:") and "may leave it out" in p for p in problems)
    assert any(p.startswith("Answer.items[].score:") and "null" in p for p in problems)
    assert any(p.startswith("Answer.items[].tags[]:") for p in problems)
    assert any(p.startswith("Answer.items[].extra{}:") for p in problems)
    assert len(problems) == 6, problems

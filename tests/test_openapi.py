"""docs/openapi.yaml matches the code: every route the HTTP port serves is in the document,
with its methods, and every path and operation in the document is served."""

from __future__ import annotations

from pathlib import Path

import yaml
from twisted.internet.task import Clock

from pbxd.config import Config
from pbxd.service import PbxService

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def served() -> dict[str, set[str]]:
    service = PbxService(Config(), reactor=Clock())
    routes: dict[str, set[str]] = {}
    for route in service.http.root.routes():
        routes.setdefault(route.path, set()).update(method.lower() for method in route.methods)
    return routes


def documented() -> dict[str, set[str]]:
    document = yaml.safe_load(DOCUMENT.read_text())
    assert document["openapi"].startswith("3.")
    return {path: set(item) & METHODS for path, item in document["paths"].items()}


def test_every_route_is_documented_and_every_documented_route_served() -> None:
    code, docs = served(), documented()
    assert all(methods for methods in code.values()), "a route without methods answers any method"
    missing = {path: sorted(methods - docs.get(path, set())) for path, methods in code.items()
               if methods - docs.get(path, set())}
    assert not missing, f"served but not in docs/openapi.yaml: {missing}"
    extra = {path: sorted(methods - code.get(path, set())) for path, methods in docs.items()
             if methods - code.get(path, set())}
    assert not extra, f"in docs/openapi.yaml but not served: {extra}"


def test_path_parameters_are_declared() -> None:
    document = yaml.safe_load(DOCUMENT.read_text())
    for path, item in document["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method in set(item) & METHODS:
            declared |= {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
        assert names == declared, path


def test_references_resolve() -> None:
    document = yaml.safe_load(DOCUMENT.read_text())

    def walk(node: object) -> None:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str):
                target: object = document
                for part in reference.removeprefix("#/").split("/"):
                    assert isinstance(target, dict) and part in target, reference
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)

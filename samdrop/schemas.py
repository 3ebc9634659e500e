"""The JSON Schemas of the documents samdrop publishes, generated from their types: one source of
truth (docs/design.md "Schemas"). ``python -m samdrop.schemas`` rewrites ``schemas/*.schema.json``;
``--check`` exits 1, naming the files, when a committed schema differs from its type (a unit test
runs the same comparison)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from samdrop.documents import ErrorRecord, ManifestLine, MasksDocument
from samdrop.messages import COMPLETION

FOLDER = Path(__file__).resolve().parents[1] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
# file stem -> the type whose written form it describes
DOCUMENTS: dict[str, tuple[str, TypeAdapter[Any]]] = {
    "masks": ("masks.json", TypeAdapter(MasksDocument)),
    "error": ("error.json", TypeAdapter(ErrorRecord)),
    "manifest-line": ("one line of manifest.jsonl", TypeAdapter(ManifestLine)),
    "completion": ("a completion message's body", COMPLETION),
}


class AsWritten(GenerateJsonSchema):
    """Schemas of documents as written: a key the class always writes is required (the documents'
    ``json_schema_serialization_defaults_required``), but a TypedDict's optional keys stay optional
    (``PromptsRecord``: that setting would mark them required too)."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if field["type"] == "typed-dict-field":
            return field.get("required", total)
        return super().field_is_required(field, total)


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of document ``name`` as written (``mode="serialization"``)."""
    title, adapter = DOCUMENTS[name]
    generated = adapter.json_schema(mode="serialization", schema_generator=AsWritten)
    return {"$schema": DIALECT, "title": title, **generated}


def render(name: str) -> str:
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def path(name: str, folder: Path = FOLDER) -> Path:
    return folder / f"{name}.schema.json"


def stale(folder: Path = FOLDER) -> list[Path]:
    """The schema files that are missing or differ from their types."""
    return [
        path(name, folder)
        for name in DOCUMENTS
        if not path(name, folder).is_file() or path(name, folder).read_text("utf-8") != render(name)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samdrop.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    parser.add_argument("--folder", type=Path, default=FOLDER, help="where the schema files are")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale(args.folder)
        for file in differ:
            print(f"{file} differs from its type: run python -m samdrop.schemas", file=sys.stderr)
        return 1 if differ else 0
    args.folder.mkdir(parents=True, exist_ok=True)
    for name in DOCUMENTS:
        path(name, args.folder).write_text(render(name), encoding="utf-8")
        print(path(name, args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())

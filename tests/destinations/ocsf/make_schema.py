"""Compile the JSON Schema that tests/destinations/test_ocsf.py validates auditq's OCSF output
against, from the OCSF schema's own source (github.com/ocsf/ocsf-schema, the v1.3.0 release
commit c8bde8c4): `python -m tests.destinations.ocsf.make_schema SOURCE_DIR > ocsf-1.3.0.json`.

The OCSF server exports JSON Schema too, but not offline; this follows the same rules for the
classes auditq emits: a class's attributes are its own over its parents' (`extends`) with
`$include`d files merged in, every `required` attribute is required (a profile's only where
the event applies the profile; auditq applies none), each attribute has the
dictionary's type (objects by reference, arrays where `is_array`), an enumerated integer takes
only its enumerated values (the class's and the dictionary's), object constraints
(`at_least_one`, `just_one`) hold, and no attribute outside the schema is allowed (the
`unmapped` object is free-form, as OCSF defines it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CLASSES = ("authentication", "account_change", "group_management", "api_activity")
PRIMITIVE = {
    "boolean_t": {"type": "boolean"},
    "float_t": {"type": "number"},
    "integer_t": {"type": "integer"},
    "long_t": {"type": "integer"},
    "string_t": {"type": "string"},
    "json_t": {},
}


class Compiler:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dictionary = json.loads((root / "dictionary.json").read_text())
        self.categories = json.loads((root / "categories.json").read_text())["attributes"]
        self.events = {
            data["name"]: data
            for path in (root / "events").rglob("*.json")
            if "name" in (data := json.loads(path.read_text()))
        }
        self.objects = {
            data["name"]: data
            for path in (root / "objects").glob("*.json")
            if "name" in (data := json.loads(path.read_text()))
        }
        self.defs: dict[str, Any] = {}

    def attributes(self, definition: dict[str, Any], family: dict[str, Any]) -> dict[str, Any]:
        """A definition's attributes over its parents', with `$include`s merged."""
        merged: dict[str, Any] = {}
        parent = definition.get("extends")
        if parent:
            merged = self.attributes(family[parent], family)
        own = dict(definition.get("attributes", {}))
        for include in own.pop("$include", []):
            included = json.loads((self.root / include).read_text()).get("attributes", {})
            for name, attr in included.items():
                merged[name] = {**merged.get(name, {}), **attr}
                if include.startswith("profiles/"):  # applies only to events naming the profile
                    merged[name]["profile"] = include
        for name, attr in own.items():
            merged[name] = {**merged.get(name, {}), **attr}
        return merged

    def type_schema(self, name: str, attr: dict[str, Any]) -> dict[str, Any]:
        entry = self.dictionary["attributes"].get(name, {})
        kind = attr.get("type") or entry.get("type")
        if kind == "object":
            schema: dict[str, Any] = {"type": "object"}  # free-form (`unmapped`)
        elif kind in self.objects:
            schema = {"$ref": f"#/$defs/{kind}"}
            self.object_schema(kind)
        else:
            while kind not in PRIMITIVE:
                kind = self.dictionary["types"]["attributes"][kind]["type"]
            schema = dict(PRIMITIVE[kind])
        enum = {**entry.get("enum", {}), **attr.get("enum", {})}
        if enum and schema.get("type") == "integer":
            schema["enum"] = sorted(int(value) for value in enum)
        if attr.get("is_array", entry.get("is_array")):
            schema = {"type": "array", "items": schema}
        return schema

    def shape(self, attributes: dict[str, Any], constraints: dict[str, Any]) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {n: self.type_schema(n, a) for n, a in attributes.items()},
            "required": sorted(
                n
                for n, a in attributes.items()
                if a.get("requirement") == "required" and not a.get("profile")
            ),
            "additionalProperties": False,
        }
        rules = []
        if constraints.get("at_least_one"):
            rules.append({"anyOf": [{"required": [n]} for n in constraints["at_least_one"]]})
        if constraints.get("just_one"):
            rules.append({"oneOf": [{"required": [n]} for n in constraints["just_one"]]})
        if rules:
            schema["allOf"] = rules
        return schema

    def object_schema(self, name: str) -> None:
        if name in self.defs:
            return
        self.defs[name] = {}  # a placeholder: objects refer to each other
        definition = self.objects[name]
        self.defs[name] = self.shape(
            self.attributes(definition, self.objects), definition.get("constraints", {})
        )

    def class_schema(self, name: str) -> dict[str, Any]:
        definition = self.events[name]
        family = definition
        while "category" not in family:  # the class's own, or its nearest parent's
            family = self.events[family["extends"]]
        category = self.categories[family["category"]]["uid"]
        class_uid = category * 1000 + definition["uid"]
        schema = self.shape(self.attributes(definition, self.events), {})
        schema["properties"]["class_uid"] = {"const": class_uid}
        schema["properties"]["category_uid"] = {"const": category}
        activities = schema["properties"]["activity_id"]["enum"]
        schema["properties"]["type_uid"] = {"enum": [class_uid * 100 + a for a in activities]}
        schema["title"] = definition["caption"]
        return schema


def main() -> None:
    compiler = Compiler(Path(sys.argv[1]))
    version = json.loads((compiler.root / "version.json").read_text())["version"]
    classes = {}
    for name in CLASSES:
        schema = compiler.class_schema(name)
        classes[str(schema["properties"]["class_uid"]["const"])] = schema
    out = {"ocsf_version": version, "classes": classes, "$defs": compiler.defs}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

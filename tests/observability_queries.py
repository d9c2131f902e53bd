"""The queries the observability config runs, extracted for offline and live tests.

- `dashboard_queries()`: every Grafana panel's PromQL, as (dashboard, panel title, expr);
- `alert_rule_queries()`: every alert rule's PromQL, as (alert name, expr);
- `metric_names(expr)` and `exported_metric_names()`: the metric names a PromQL expression
  reads, and the names the code defines (string literals under services/, retry/, outbox/);
- `saved_search_queries()`: every Kibana saved search's KQL translated to Elasticsearch query
  DSL (term/terms/match/exists/bool), as (title, kql, dsl); `kql_to_dsl()` translates one
  query, e.g. a journey narrowed to one order: kql_to_dsl('labels.order_id:"<id>"', types).

The offline tests check structure and names (tests/unit/observability); the live tests run
these same queries against a real Prometheus and the ES-API endpoint. Nothing here opens a
socket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
ALERT_RULES = ROOT / "local" / "alerts.yml"
KIBANA_OBJECTS = ROOT / "elk" / "kibana" / "saved_objects.ndjson"
INDEX_TEMPLATE = ROOT / "elk" / "elasticsearch" / "index-template.json"
METRIC_SOURCE_DIRS = ("services", "retry", "outbox")

DATASOURCE_UID = "steadfast-prometheus"
DATA_VIEW_ID = "steadfast-logs"

# Series Prometheus itself provides, not our code.
PROMETHEUS_BUILTIN_METRICS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# --------------------------------------------------------------------------- Grafana / PromQL


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Dashboard JSON by file name (e.g. "overview.json")."""
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def dashboard_queries(directory: Path = DASHBOARDS_DIR) -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL) for every target of every panel."""
    queries = []
    for board in load_dashboards(directory).values():
        for panel in iter_panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((board["title"], panel["title"], target["expr"]))
    return queries


def alert_rule_queries(path: Path = ALERT_RULES) -> list[tuple[str, str]]:
    """(alert or record name, PromQL) for every rule of the rules file."""
    rules = yaml.safe_load(path.read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"].strip())
        for group in rules["groups"]
        for rule in group["rules"]
    ]


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_MODIFIERS = re.compile(r"\b(?:offset)\s+-?\w+|@\s*[\w.()]+", re.IGNORECASE)
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed).

    A small lexer, not a parser: enough for the expressions our dashboards and rules use.
    Their syntax is checked for real by promtool in the tests.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _MODIFIERS.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


_METRIC_LITERAL = re.compile(r"""["'](steadfast_[a-z0-9_]+)["']""")


def exported_metric_names(root: Path = ROOT) -> set[str]:
    """`steadfast_*` names appearing as string literals in the processes' source."""
    names: set[str] = set()
    for directory in METRIC_SOURCE_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            names.update(_METRIC_LITERAL.findall(path.read_text()))
    return names


def is_exported(name: str, exported: set[str]) -> bool:
    """True when `name` is a series some defined metric exposes.

    prometheus_client exposes a Histogram `x` as x_bucket/x_sum/x_count, and a Counter `x`
    (or `x_total`) as x_total.
    """
    if name in PROMETHEUS_BUILTIN_METRICS or name in exported:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return True
    return name.endswith("_total") and name.removesuffix("_total") in exported


# --------------------------------------------------------------------------- Kibana / KQL


@dataclass(frozen=True)
class SavedSearch:
    id: str
    title: str
    kql: str
    index_ref: str | None
    sort: list[list[str]]
    columns: list[str]


def load_saved_objects(path: Path = KIBANA_OBJECTS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def saved_searches(path: Path = KIBANA_OBJECTS) -> list[SavedSearch]:
    found = []
    for obj in load_saved_objects(path):
        if obj["type"] != "search":
            continue
        attributes = obj["attributes"]
        source = json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])
        ref_name = source.get("indexRefName")
        index_ref = next(
            (ref["id"] for ref in obj.get("references", []) if ref["name"] == ref_name), None
        )
        query = source["query"]
        if query.get("language") != "kuery":
            raise ValueError(f"{obj['id']}: only KQL saved searches are supported")
        found.append(
            SavedSearch(
                id=obj["id"],
                title=attributes["title"],
                kql=query["query"],
                index_ref=index_ref,
                sort=attributes.get("sort", []),
                columns=attributes.get("columns", []),
            )
        )
    return found


def template_field_types(path: Path = INDEX_TEMPLATE) -> dict[str, str]:
    """Dotted field name → mapping type, flattened from the index template's properties."""
    template = json.loads(path.read_text())
    types: dict[str, str] = {}

    def walk(properties: Mapping[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                types[f"{prefix}{name}"] = spec.get("type", "object")

    walk(template["template"]["mappings"]["properties"], "")
    return types


def saved_search_queries(
    path: Path = KIBANA_OBJECTS, template: Path = INDEX_TEMPLATE
) -> list[tuple[str, str, dict[str, Any]]]:
    """(title, KQL, Elasticsearch query DSL) for every saved search."""
    types = template_field_types(template)
    return [(s.title, s.kql, kql_to_dsl(s.kql, types)) for s in saved_searches(path)]


class KqlError(ValueError):
    """A KQL query outside the subset we translate."""


_KQL_TOKEN = re.compile(r'\s*(?:(\()|(\))|(:)|("(?:\\.|[^"\\])*")|([^\s():"]+))')
_TEXT_TYPES = frozenset({"text", "match_only_text"})


def kql_to_dsl(kql: str, field_types: Mapping[str, str]) -> dict[str, Any]:
    """Translate a KQL query to Elasticsearch query DSL, wrapped in a bool filter.

    Supported: `field:value`, `field:"quoted value"`, `field:*` (exists),
    `field:(a or b)` (terms), `and`, `or`, `not`, parentheses. A keyword/numeric field
    becomes term/terms, a text field match; wildcards inside values are refused.
    An empty query matches everything.
    """
    tokens = _tokenize(kql)
    if not tokens:
        return {"bool": {"filter": [{"match_all": {}}]}}
    parser = _KqlParser(tokens, field_types)
    clause = parser.parse_or()
    if parser.pos != len(tokens):
        raise KqlError(f"unexpected {tokens[parser.pos][1]!r} in {kql!r}")
    return {"bool": {"filter": [clause]}}


def _tokenize(kql: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(kql):
        if kql[pos:].strip() == "":
            break
        match = _KQL_TOKEN.match(kql, pos)
        if not match:
            raise KqlError(f"cannot read {kql[pos:]!r}")
        lparen, rparen, colon, quoted, word = match.groups()
        if lparen:
            tokens.append(("(", lparen))
        elif rparen:
            tokens.append((")", rparen))
        elif colon:
            tokens.append((":", colon))
        elif quoted:
            tokens.append(("quoted", json.loads(quoted)))
        else:
            lowered = word.lower()
            tokens.append((lowered if lowered in {"and", "or", "not"} else "word", word))
        pos = match.end()
    return tokens


class _KqlParser:
    def __init__(self, tokens: list[tuple[str, str]], field_types: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.field_types = field_types

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            found = self.tokens[self.pos][1] if self.pos < len(self.tokens) else "end"
            raise KqlError(f"expected {kind}, found {found!r}")
        value = self.tokens[self.pos][1]
        self.pos += 1
        return value

    def parse_or(self) -> dict[str, Any]:
        clauses = [self.parse_and()]
        while self.peek() == "or":
            self.take("or")
            clauses.append(self.parse_and())
        if len(clauses) == 1:
            return clauses[0]
        return {"bool": {"should": clauses, "minimum_should_match": 1}}

    def parse_and(self) -> dict[str, Any]:
        clauses = [self.parse_not()]
        while self.peek() == "and":
            self.take("and")
            clauses.append(self.parse_not())
        return clauses[0] if len(clauses) == 1 else {"bool": {"filter": clauses}}

    def parse_not(self) -> dict[str, Any]:
        if self.peek() == "not":
            self.take("not")
            return {"bool": {"must_not": [self.parse_not()]}}
        if self.peek() == "(":
            self.take("(")
            clause = self.parse_or()
            self.take(")")
            return clause
        return self.parse_field()

    def parse_field(self) -> dict[str, Any]:
        field = self.take("word")
        if field not in self.field_types:
            raise KqlError(f"field {field!r} has no mapping in the index template")
        self.take(":")
        if self.peek() == "(":
            self.take("(")
            values = [self.value()]
            while self.peek() == "or":
                self.take("or")
                values.append(self.value())
            self.take(")")
            return self.terms(field, values)
        if self.peek() == "word" and self.tokens[self.pos][1] == "*":
            self.pos += 1
            return {"exists": {"field": field}}
        return self.terms(field, [self.value()])

    def value(self) -> str:
        kind = self.peek()
        if kind == "quoted":
            return self.take("quoted")
        word = self.take("word")
        if "*" in word or "?" in word:
            raise KqlError(f"wildcard value {word!r} is not supported")
        return word

    def terms(self, field: str, values: list[str]) -> dict[str, Any]:
        if self.field_types[field] in _TEXT_TYPES:
            matches = [{"match": {field: value}} for value in values]
            if len(matches) == 1:
                return matches[0]
            return {"bool": {"should": matches, "minimum_should_match": 1}}
        if len(values) == 1:
            return {"term": {field: values[0]}}
        return {"terms": {field: values}}

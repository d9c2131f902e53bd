"""The log pipeline's configuration, checked offline: Filebeat → Logstash → ES → Kibana.

The saved searches are translated to Elasticsearch query DSL here (and run against the
ES-API endpoint by the live test), so every field they use must be mapped by the index
template, and every event they look for must be one the code logs.
"""

from __future__ import annotations

import fnmatch
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from observability_queries import (
    DATA_VIEW_ID,
    INDEX_TEMPLATE,
    KIBANA_OBJECTS,
    METRIC_SOURCE_DIRS,
    ROOT,
    KqlError,
    kql_to_dsl,
    load_saved_objects,
    saved_search_queries,
    saved_searches,
    template_field_types,
)

ELK = ROOT / "elk"
INGEST_PIPELINE = ELK / "elasticsearch" / "ingest-pipeline.json"
LOGSTASH_PIPELINE = ELK / "logstash" / "pipeline" / "steadfast.conf"
FILEBEAT = ELK / "filebeat" / "filebeat.yml"
SETUP_SCRIPT = ELK / "kibana-setup.sh"

ACTIONS = [
    "message_parked",
    "message_parked_behind",
    "message_redriven",
    "message_rescheduled",
    "message_dead",
    "poison_parked",
]
EXPECTED_SEARCHES = {
    "steadfast-order-journey": {"bool": {"filter": [{"exists": {"field": "labels.order_id"}}]}},
    "steadfast-errors-by-class": {"bool": {"filter": [{"exists": {"field": "error.type"}}]}},
    "steadfast-retries-dead-letters": {"bool": {"filter": [{"terms": {"event.action": ACTIONS}}]}},
    "steadfast-breaker-transitions": {
        "bool": {"filter": [{"term": {"event.action": "breaker_transition"}}]}
    },
    "steadfast-admin-actions": {"bool": {"filter": [{"term": {"event.action": "admin_action"}}]}},
    "steadfast-alerts": {
        "bool": {"filter": [{"terms": {"event.action": ["alert_firing", "alert_resolved"]}}]}
    },
}
# ECS fields the processes log (services/common/logs.py and the brief) and their mapping.
FIELD_TYPES = {
    "@timestamp": "date",
    "message": "text",
    "log.level": "keyword",
    "log.logger": "keyword",
    "service.name": "keyword",
    "event.action": "keyword",
    "trace.id": "keyword",
    "labels.order_id": "keyword",
    "labels.message_id": "keyword",
    "error.type": "keyword",
    "error.message": "text",
    "error.stack_trace": "text",
    "kafka.topic": "keyword",
    "kafka.partition": "long",
    "kafka.offset": "long",
    "retry.attempt": "long",
    "alert.name": "keyword",
    "alert.status": "keyword",
    "breaker.name": "keyword",
    "breaker.from_state": "keyword",
    "breaker.to_state": "keyword",
    "admin.action": "keyword",
    "admin.rows": "long",
    "user.name": "keyword",
}


def template() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(INDEX_TEMPLATE.read_text())
    return body


def objects_by_id() -> dict[str, dict[str, Any]]:
    return {obj["id"]: obj for obj in load_saved_objects()}


# --------------------------------------------------------------------------- Kibana


def test_saved_objects_parse_with_unique_ids() -> None:
    objects = load_saved_objects()
    for obj in objects:
        assert {"id", "type", "attributes", "references"} <= set(obj), obj.get("id")
    ids = [(obj["type"], obj["id"]) for obj in objects]
    assert len(set(ids)) == len(ids)
    assert KIBANA_OBJECTS.read_text().endswith("\n")


def test_data_view_covers_the_daily_indices_on_timestamp() -> None:
    views = [obj for obj in load_saved_objects() if obj["type"] == "index-pattern"]
    assert [view["id"] for view in views] == [DATA_VIEW_ID]
    attributes = views[0]["attributes"]
    assert attributes["title"] == "steadfast-logs-*"
    assert attributes["timeFieldName"] == "@timestamp"


def test_every_saved_search_uses_the_data_view_and_sorts_by_time() -> None:
    searches = saved_searches()
    assert {s.id for s in searches} == set(EXPECTED_SEARCHES)
    for search in searches:
        assert search.index_ref == DATA_VIEW_ID, search.title
        assert search.sort and search.sort[0][0] == "@timestamp", search.title
        assert search.columns, search.title
    journey = next(s for s in searches if s.id == "steadfast-order-journey")
    assert journey.sort[0] == ["@timestamp", "asc"], "a journey reads oldest first"


@pytest.mark.parametrize("search_id", sorted(EXPECTED_SEARCHES))
def test_saved_search_translates_to_the_expected_dsl(search_id: str) -> None:
    search = next(s for s in saved_searches() if s.id == search_id)
    assert kql_to_dsl(search.kql, template_field_types()) == EXPECTED_SEARCHES[search_id]


def test_saved_search_queries_lists_every_search() -> None:
    queries = saved_search_queries()
    assert len(queries) == len(EXPECTED_SEARCHES)
    for title, kql, dsl in queries:
        assert title and kql and "bool" in dsl


def test_journey_narrowed_to_one_order() -> None:
    dsl = kql_to_dsl('labels.order_id:"4f1c-9a"', template_field_types())
    assert dsl == {"bool": {"filter": [{"term": {"labels.order_id": "4f1c-9a"}}]}}


@pytest.mark.parametrize(
    ("kql", "expected"),
    [
        ("", {"match_all": {}}),
        ("message:timeout", {"match": {"message": "timeout"}}),
        (
            "service.name:reservation-api and not log.level:debug",
            {
                "bool": {
                    "filter": [
                        {"term": {"service.name": "reservation-api"}},
                        {"bool": {"must_not": [{"term": {"log.level": "debug"}}]}},
                    ]
                }
            },
        ),
        (
            "(kafka.partition:3 or trace.id:abc)",
            {
                "bool": {
                    "should": [{"term": {"kafka.partition": "3"}}, {"term": {"trace.id": "abc"}}],
                    "minimum_should_match": 1,
                }
            },
        ),
    ],
)
def test_kql_translation(kql: str, expected: dict[str, Any]) -> None:
    assert kql_to_dsl(kql, template_field_types()) == {"bool": {"filter": [expected]}}


@pytest.mark.parametrize(
    "kql", ["no_such.field:x", "event.action:order_*", "event.action:(a or", "event.action"]
)
def test_kql_outside_the_subset_is_refused(kql: str) -> None:
    with pytest.raises(KqlError):
        kql_to_dsl(kql, template_field_types())


def test_every_field_a_search_shows_or_filters_is_mapped() -> None:
    types = template_field_types()
    for search in saved_searches():
        fields = set(search.columns) | {field for field, _ in search.sort}
        fields |= set(re.findall(r"([\w.@]+):", search.kql))
        unmapped = fields - set(types)
        assert not unmapped, f"{search.title}: {sorted(unmapped)} not in the index template"


def test_searched_event_actions_are_logged_by_the_code() -> None:
    source = "\n".join(
        path.read_text()
        for directory in METRIC_SOURCE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
    )
    missing = set()
    for search in saved_searches():
        for action in re.findall(r"event\.action:\(?([^)]*)\)?", search.kql):
            for value in re.split(r"\s+or\s+", action.strip()):
                if f'"{value}"' not in source:
                    missing.add(value)
    assert not missing, f"no code logs event.action {sorted(missing)}"


# Top-level ECS names the processes log under; a key outside them is app-specific.
ECS_OBJECTS = [
    *("admin", "alert", "breaker", "container", "error", "event", "host", "http", "kafka"),
    *("labels", "log", "order", "process", "retry", "server", "service", "trace", "url", "user"),
]
# A dict key: a string literal after `{`, `,` or at the start of a line, before a colon.
_LOGGED_KEY = re.compile(
    r'(?:[{,]|^)\s*"((?:' + "|".join(ECS_OBJECTS) + r')(?:\.[a-z_]+)*)"\s*:', re.MULTILINE
)


def logged_fields() -> dict[str, set[str]]:
    """ECS-looking keys the code passes to log calls, with the files that use each."""
    found: dict[str, set[str]] = {}
    for directory in METRIC_SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for key in _LOGGED_KEY.findall(path.read_text()):
                found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return found


def test_logged_fields_fit_the_template() -> None:
    # A key logged as a scalar where another line (or the template) has an object, like
    # "url" next to "url.full", makes Elasticsearch reject that line's document.
    fields = logged_fields()
    types = template_field_types()
    conflicts = []
    for key, paths in sorted(fields.items()):
        objects = {name for name in [*fields, *types] if name.startswith(f"{key}.")}
        if objects:
            where = ", ".join(sorted(paths))
            conflicts.append(
                f"{key!r} ({where}) is logged as a value, but {sorted(objects)} make it an object"
            )
        parent = key.rsplit(".", 1)[0]
        if "." in key and parent in types:
            conflicts.append(f"{key!r}: the template maps {parent!r} as a {types[parent]}")
    assert not conflicts, "\n".join(conflicts)


def test_logs_dashboard_shows_every_saved_search() -> None:
    objects = objects_by_id()
    dashboard = objects["steadfast-logs-dashboard"]
    assert dashboard["type"] == "dashboard"
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    references = {ref["name"]: ref for ref in dashboard["references"]}
    shown = set()
    for panel in panels:
        ref = references[panel["panelRefName"]]
        assert ref["type"] == panel["type"] == "search"
        assert ref["id"] in objects
        shown.add(ref["id"])
    assert shown == set(EXPECTED_SEARCHES)
    json.loads(dashboard["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


# --------------------------------------------------------------------------- Elasticsearch


def test_template_is_a_plain_index_template_for_the_data_view() -> None:
    body = template()
    assert "data_stream" not in body, "the ES-API endpoint has no data streams"
    assert body["index_patterns"] == ["steadfast-logs-*"]
    settings = body["template"]["settings"]["index"]
    assert "lifecycle" not in settings, "the ES-API endpoint has no ILM"
    assert settings["default_pipeline"] == "steadfast-logs"


@pytest.mark.parametrize(("field", "kind"), sorted(FIELD_TYPES.items()))
def test_template_maps_the_ecs_fields(field: str, kind: str) -> None:
    assert template_field_types().get(field) == kind


def test_ingest_pipeline_expands_dotted_keys() -> None:
    pipeline = json.loads(INGEST_PIPELINE.read_text())
    first = pipeline["processors"][0]
    assert first == {"dot_expander": {"field": "*", "override": True}}


def test_logstash_writes_where_the_template_and_data_view_apply() -> None:
    conf = LOGSTASH_PIPELINE.read_text()
    assert conf.count("{") == conf.count("}")
    index = re.search(r'index\s*=>\s*"([^"]+)"', conf)
    assert index, "no index in the elasticsearch output"
    example = index.group(1).replace("%{+YYYY.MM.dd}", datetime.now(UTC).strftime("%Y.%m.%d"))
    assert fnmatch.fnmatch(example, template()["index_patterns"][0])
    assert re.search(r"data_stream\s*=>\s*false", conf)
    port = re.search(r"beats\s*\{\s*port\s*=>\s*(\d+)", conf)
    assert port and port.group(1) == "5044"


def test_filebeat_expands_json_keys_and_ships_to_logstash() -> None:
    config = yaml.safe_load(FILEBEAT.read_text())
    assert any("5044" in host for host in config["output.logstash"]["hosts"])
    inputs = list(config["filebeat.inputs"])
    for provider in config["filebeat.autodiscover"]["providers"]:
        for entry in provider["templates"]:
            inputs.extend(entry["config"])
    assert inputs
    for item in inputs:
        ndjson = [p["ndjson"] for p in item["parsers"] if "ndjson" in p]
        assert ndjson, item["id"]
        # Expanded keys are what the template's object mappings and Logstash's
        # [event][action] references expect.
        assert ndjson[0]["expand_keys"] is True and ndjson[0]["target"] == "", item["id"]


def test_setup_script_installs_the_files_that_exist() -> None:
    script = SETUP_SCRIPT.read_text()
    for path in re.findall(r'"\$HERE/([^"]+)"', script):
        assert (ELK / path).is_file(), path
    assert "_index_template/steadfast-logs" in script
    assert "_ingest/pipeline/steadfast-logs" in script
    assert "saved_objects/_import" in script

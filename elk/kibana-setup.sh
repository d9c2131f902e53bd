#!/bin/sh
# One-shot set-up of the log pipeline's targets (the compose service `kibana-setup` runs it):
#   1. the ingest pipeline and index template in Elasticsearch (before Logstash writes);
#   2. the Kibana data view, saved searches and dashboard.
# Idempotent: PUTs replace, the import overwrites. Any failure exits non-zero, so services
# that depend on `service_completed_successfully` do not start on a half-made setup.
set -eu

ES="${ELASTICSEARCH_URL:-http://elasticsearch:9200}"
KIBANA="${KIBANA_URL:-http://kibana:5601}"
HERE="$(cd "$(dirname "$0")" && pwd)"

put_json() {
  echo "PUT $ES/$1"
  curl -fsS -X PUT "$ES/$1" -H 'Content-Type: application/json' --data-binary "@$2"
  echo
}

put_json _ingest/pipeline/steadfast-logs "$HERE/elasticsearch/ingest-pipeline.json"
put_json _index_template/steadfast-logs "$HERE/elasticsearch/index-template.json"

echo "POST $KIBANA/api/saved_objects/_import"
result="$(curl -fsS -X POST "$KIBANA/api/saved_objects/_import?overwrite=true" \
  -H 'kbn-xsrf: true' --form "file=@$HERE/kibana/saved_objects.ndjson")"
echo "$result"
case "$result" in
  *'"success":true'*) echo "kibana saved objects imported" ;;
  *) echo "kibana import failed" >&2; exit 1 ;;
esac

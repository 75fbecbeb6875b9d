package monitoring_test

import data.fixtures
import data.monitoring
import rego.v1

_url(anchor) := sprintf("https://github.com/example/saga-coordinator/blob/main/docs/OPERATIONS.md#%s", [anchor])

_alert(name, labels, annotations) := {"alert": name, "expr": "up == 0", "labels": labels, "annotations": annotations}

_good := {"summary": "s", "description": "d", "runbook_url": _url("consumerlaggrowing")}

_rules(rules) := {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": fixtures.meta("saga"), "spec": {"groups": [{"name": "saga", "rules": rules}]}}

_docs := {"operations": {"name": "OPERATIONS.md", "anchors": ["consumerlaggrowing"]}}

test_actionable_alerts if {
	rules := _rules([
		_alert("Good", {"severity": "warning"}, _good),
		_alert("Paging", {"severity": "page"}, object.remove(_good, ["runbook_url"])),
		_alert("Nowhere", {"severity": "info"}, object.union(_good, {"runbook_url": _url("relaystuck"), "description": " "})),
		_alert("Elsewhere", {}, object.union(_good, {"runbook_url": "https://example.com/runbook"})),
		{"record": "job:up:sum", "expr": "sum(up)"},
		_alert("Good", {"severity": "warning"}, _good),
	])
	msgs := monitoring.deny with input as fixtures.render(array.concat(fixtures.app, [rules])) with data.docs as _docs
	msgs == {
		"PrometheusRule/saga (saga): alert Paging: label severity is 'page', not one of critical, warning, info",
		"PrometheusRule/saga (saga): alert Paging: annotation runbook_url is missing",
		"PrometheusRule/saga (saga): alert Nowhere: annotation description is missing",
		"PrometheusRule/saga (saga): alert Nowhere: runbook_url anchor #relaystuck is not a heading of OPERATIONS.md",
		"PrometheusRule/saga (saga): alert Elsewhere: label severity is None, not one of critical, warning, info",
		"PrometheusRule/saga (saga): alert Elsewhere: runbook_url https://example.com/runbook does not point at a heading of docs/OPERATIONS.md",
		"manifests: alert Good is defined 2 times",
	}
}

_dashboard(data_) := {"apiVersion": "v1", "kind": "ConfigMap", "metadata": object.union(fixtures.meta("dashboard"), {"labels": {"grafana_dashboard": "1"}}), "data": data_}

test_dashboards if {
	dash := json.marshal({"uid": "saga", "title": "", "panels": [
		{"id": 1, "title": "A", "targets": [{"refId": "A", "expr": "up"}]},
		{"id": 2, "title": "Row", "type": "row", "panels": [{"id": 1, "title": "B", "targets": [{"expr": "up"}]}]},
	]})
	objs := array.concat(fixtures.app, [_dashboard({"saga.json": dash, "broken.json": "{"}), _dashboard({"README": "x"})])
	msgs := monitoring.deny with input as fixtures.render(objs)
	msgs == {
		"ConfigMap/dashboard (saga): saga.json: dashboard has no title",
		"ConfigMap/dashboard (saga): saga.json: panel id 1 is used 2 times",
		"ConfigMap/dashboard (saga): saga.json: panel 'B' has a target without expr or refId",
		"ConfigMap/dashboard (saga): broken.json: not valid JSON",
		"ConfigMap/dashboard (saga): labelled grafana_dashboard but holds no *.json dashboard",
	}
}

_monitor(endpoints) := {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": fixtures.meta("saga"), "spec": {
	"selector": {"matchLabels": {"app.kubernetes.io/part-of": "saga-coordinator"}},
	"endpoints": endpoints,
}}

test_service_monitor if {
	count(monitoring.deny) == 0 with input as fixtures.render(array.concat(fixtures.app, [_monitor([{"port": "http-metrics"}])]))
	msgs := monitoring.deny with input as fixtures.render(array.concat(fixtures.app, [_monitor([{"port": "metrics"}])]))
	msgs == {
		"ServiceMonitor/saga (saga): endpoint port metrics is not a port of any selected Service",
		"ServiceMonitor/saga (saga): no endpoint scrapes Service/orchestrator (its ports: grpc, http-metrics)",
	}
}

test_service_monitor_selects_nothing if {
	monitor := json.patch(_monitor([{"port": "http-metrics"}]), [{"op": "replace", "path": "/spec/selector", "value": {"matchLabels": {"x": "y"}}}])
	monitoring.deny == {`ServiceMonitor/saga (saga): selector {"matchLabels": {"x": "y"}} matches no Service in the manifests`} with input as fixtures.render(array.concat(fixtures.app, [monitor]))
}

test_scrape_refused_by_network_policy if {
	objs := fixtures.patched("NetworkPolicy", [{"op": "replace", "path": "/spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name", "value": "ingress-nginx"}])
	msgs := monitoring.deny with input as fixtures.render(array.concat(objs, [_monitor([{"port": "http-metrics"}])]))
	msgs == {"ServiceMonitor/saga (saga): scrapes port 8080 of orchestrator, but its NetworkPolicy does not admit namespace monitoring there"}
}

test_plain_http_under_strict_mtls if {
	strict := {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": fixtures.meta("default"), "spec": {"mtls": {"mode": "STRICT"}}}
	msgs := monitoring.deny with input as fixtures.render(array.concat(fixtures.app, [strict, _monitor([{"port": "http-metrics"}])]))
	msgs == {"ServiceMonitor/saga (saga): endpoint http-metrics: plain HTTP, but STRICT mutual TLS refuses it; scrape with the mesh's certificates (scheme https and tlsConfig, as k8s/components/istio does)"}
}

package lib_test

import data.fixtures
import data.lib
import rego.v1

test_selects if {
	lib.selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
	not lib.selects({"matchLabels": {"a": "1"}}, {"a": "2"})
	lib.selects({"a": "1"}, {"a": "1"})
	not lib.selects({}, {"a": "1"})
	lib.selects({"matchLabels": {}}, {"a": "1"})
	lib.selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}, {"key": "c", "operator": "DoesNotExist"}]}, {"a": "2"})
	not lib.selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["2"]}]}, {"a": "2"})
	lib.selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["2"]}]}, {})
	not lib.selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
}

# envFrom first, then env; later entries win; ConfigMap values resolved.
test_env if {
	container := {
		"envFrom": [{"configMapRef": {"name": "orchestrator-config"}, "prefix": "X_"}, {"configMapRef": {"name": "orchestrator-config"}}],
		"env": [
			{"name": "APP_LOG_FORMAT", "value": "text"},
			{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
			{"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
			{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "orchestrator-config", "key": "APP_HTTP__LISTEN"}}},
			{"name": "E"},
		],
	}
	vars := lib.env(container) with input as fixtures.render(fixtures.app)
	vars.APP_LOG_FORMAT == {"from": "value", "value": "text"}
	vars.X_APP_LOG_FORMAT == {"from": "configmap", "value": "json"}
	vars.S == {"from": "secret", "secret": "s", "key": "k"}
	vars.F.from == "field"
	lib.value(vars, "C") == "0.0.0.0:8080"
	lib.value_of(vars, "S") == null
	not lib.setting(vars, "E")
	lib.value_or(vars, "E", "d") == "d"
}

test_saga_service if {
	lib.saga_service({"image": "r/saga-coordinator:1"}) == {"service": "orchestrator", "migrate": false}
	lib.saga_service({"image": "r/saga-coordinator:1", "command": ["/usr/local/bin/user-service"], "args": ["migrate"]}) == {"service": "user-service", "migrate": true}
	not lib.saga_service({"image": "r/saga-coordinator:1", "command": ["/bin/sh"]})
	not lib.saga_service({"image": "saga-coordinator/postgres:16"})
}

test_ingress_admission if {
	w := fixtures.deployment
	rules := lib.ingress_admission(w) with input as fixtures.render(fixtures.app)
	lib.admits(rules, "monitoring", 8080)
	not lib.admits(rules, "saga", 8080)
	lib.admits(rules, "saga", 50051)
	not lib.admits(rules, "monitoring", 50051)
	lib.ingress_restricted(w) with input as fixtures.render(fixtures.app)
	not lib.ingress_restricted(w) with input as fixtures.render([fixtures.deployment])
}

test_label if {
	lib.label(fixtures.deployment) == "Deployment/orchestrator (saga)"
	lib.label({"kind": "Namespace", "metadata": {"name": "saga"}}) == "Namespace/saga"
}

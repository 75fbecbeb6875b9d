package settings_test

import data.fixtures
import data.settings
import rego.v1

_config(ops) := msgs if {
	msgs := settings.deny with input as fixtures.render(fixtures.patched("ConfigMap", ops))
}

_where := "Deployment/orchestrator (saga): container orchestrator (orchestrator)"

test_setting_names if {
	not settings.setting_error("orchestrator", "APP_GRPC__TLS__CERT_FILE")
	not settings.setting_error("orchestrator", "APP_AUTH__OPERATORS__ALICE")
	not settings.setting_error("user-service", "RUST_LOG")
	not settings.setting_error("user-service", "OTEL_EXPORTER_OTLP_ENDPOINT")
	settings.setting_error("user-service", "APP_GRPC__LISTEN") == "APP_GRPC__LISTEN: `grpc` is not a setting of the user-service (top level); it rejects unknown settings"
	settings.setting_error("orchestrator", "APP_HTTP__TLS__CA_FILE") == "APP_HTTP__TLS__CA_FILE: `ca_file` is not a setting of the orchestrator (HTTP__TLS); it rejects unknown settings"
	settings.setting_error("orchestrator", "APP_LOG_FORMAT__X") == "APP_LOG_FORMAT__X: `x` is not a setting of the orchestrator (LOG_FORMAT); it rejects unknown settings"
	settings.setting_error("orchestrator", "APP_AUTH__OPERATORS__ALICE__X") == "APP_AUTH__OPERATORS__ALICE__X: map values are plain settings"
	settings.setting_error("orchestrator", "APP_AUTH__OPERATORS") == "APP_AUTH__OPERATORS: names a group of settings, not one setting"
	settings.setting_error("orchestrator", "APP_HTTP") == "APP_HTTP: names a group of settings, not one setting"
}

test_listen_and_required_values if {
	msgs := _config([
		{"op": "replace", "path": "/data/APP_HTTP__LISTEN", "value": "127.0.0.1:8081"},
		{"op": "remove", "path": "/data/APP_GRPC__LISTEN"},
		{"op": "replace", "path": "/data/APP_LOG_FORMAT", "value": "text"},
		{"op": "remove", "path": "/data/APP_KAFKA__CREATE_TOPICS"},
		{"op": "replace", "path": "/data/APP_DATABASE__CREATE_IF_MISSING", "value": "true"},
	])
	msgs == {
		sprintf("%s: APP_HTTP__LISTEN=127.0.0.1:8081 is not reachable from outside the pod (use 0.0.0.0)", [_where]),
		sprintf("%s: APP_HTTP__LISTEN=127.0.0.1:8081 is not one of the container ports [8080, 50051]", [_where]),
		sprintf("%s: APP_GRPC__LISTEN is not set (the default listens on 127.0.0.1 only)", [_where]),
		sprintf("%s: APP_LOG_FORMAT should be json in a cluster", [_where]),
		sprintf("%s: APP_KAFKA__CREATE_TOPICS must be false (topics come from KafkaTopic resources)", [_where]),
		sprintf("%s: APP_DATABASE__CREATE_IF_MISSING must be false (databases are provisioned, and the default true needs rights on the `postgres` database)", [_where]),
	}
}

test_ipv6_listen if {
	count(_config([{"op": "replace", "path": "/data/APP_HTTP__LISTEN", "value": "[::]:8080"}])) == 0
}

test_sasl_incomplete if {
	msgs := _config([{"op": "add", "path": "/data/APP_KAFKA__SECURITY__PROTOCOL", "value": "sasl_ssl"}])
	msgs == {
		sprintf("%s: APP_KAFKA__SECURITY__SASL_MECHANISM=None is not one of ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']", [_where]),
		sprintf("%s: sasl_ssl without APP_KAFKA__SECURITY__USERNAME", [_where]),
		sprintf("%s: sasl_ssl needs APP_KAFKA__SECURITY__PASSWORD from a Secret", [_where]),
		sprintf("%s: sasl_ssl without APP_KAFKA__SECURITY__CA_FILE (the cluster CA)", [_where]),
	}
}

test_sasl_settings_without_sasl if {
	msgs := _config([
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__USERNAME", "value": "saga"},
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__CA_FILE", "value": "/tmp/ca.crt"},
		{"op": "add", "path": "/data/APP_KAFKA__SECURITY__PROTOCOL", "value": "tls"},
	])
	msgs == {
		sprintf("%s: APP_KAFKA__SECURITY__PROTOCOL=tls is not one of ['plaintext', 'sasl_plaintext', 'sasl_ssl', 'ssl']", [_where]),
		sprintf("%s: SASL settings ['APP_KAFKA__SECURITY__USERNAME'] with protocol tls", [_where]),
	}
}

test_ca_file_without_tls if {
	_config([{"op": "add", "path": "/data/APP_KAFKA__SECURITY__CA_FILE", "value": "/tmp/ca.crt"}]) == {sprintf("%s: APP_KAFKA__SECURITY__CA_FILE with protocol plaintext (no TLS)", [_where])}
}

test_tls_files if {
	msgs := _config([
		{"op": "add", "path": "/data/APP_GRPC__TLS__CERT_FILE", "value": "/etc/saga/tls/tls.crt"},
		{"op": "add", "path": "/data/APP_GRPC__TLS__CLIENT_CA_FILE", "value": "/tmp/ca.crt"},
		{"op": "add", "path": "/data/APP_HTTP__TLS__KEY_FILE", "value": "/tmp/tls.key"},
	])
	msgs == {
		sprintf("%s: APP_GRPC__TLS__CERT_FILE=/etc/saga/tls/tls.crt is not inside any volumeMount ['/tmp']", [_where]),
		sprintf("%s: APP_GRPC__TLS__CERT_FILE without its pair", [_where]),
		sprintf("%s: APP_HTTP__TLS__KEY_FILE without its pair", [_where]),
	}
}

test_client_ca_needs_certificate if {
	_config([{"op": "add", "path": "/data/APP_GRPC__TLS__CLIENT_CA_FILE", "value": "/tmp/ca.crt"}]) == {sprintf("%s: APP_GRPC__TLS__CLIENT_CA_FILE (mTLS) needs APP_GRPC__TLS__CERT_FILE/KEY_FILE", [_where])}
}

test_https_needs_https_probes if {
	msgs := _config([
		{"op": "add", "path": "/data/APP_HTTP__TLS__CERT_FILE", "value": "/tmp/tls.crt"},
		{"op": "add", "path": "/data/APP_HTTP__TLS__KEY_FILE", "value": "/tmp/tls.key"},
	])
	msgs == {sprintf("%s: %s uses HTTP but the HTTP port serves HTTPS", [_where, p]) | some p in ["startupProbe", "livenessProbe", "readinessProbe"]}
}

test_probes_and_grace if {
	objs := fixtures.patched("Deployment", [
		{"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe/httpGet/path", "value": "/healthz"},
		{"op": "replace", "path": "/spec/template/spec/containers/0/startupProbe", "value": {"tcpSocket": {"port": 8080}}},
		{"op": "add", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 10},
		{"op": "replace", "path": "/spec/template/spec/containers/0/env/0", "value": {"name": "APP_DATABASE__URL", "value": "postgres://x"}},
	])
	msgs := settings.deny with input as fixtures.render(objs)
	msgs == {
		sprintf("%s: readinessProbe path /healthz (expected /readyz)", [_where]),
		sprintf("%s: startupProbe must be an httpGet probe of /healthz or /readyz", [_where]),
		sprintf("%s: APP_DATABASE__URL must come from a Secret (secretKeyRef)", [_where]),
		"Deployment/orchestrator (saga): terminationGracePeriodSeconds 10: shutdown drains ≤ 15 s and flushes spans ≤ 5 s; use 30 or more",
	}
}

# A migration Job runs the same binary: its settings are checked, not its listeners or probes.
test_migrate_job if {
	job := {"apiVersion": "batch/v1", "kind": "Job", "metadata": fixtures.meta("orchestrator-migrate"), "spec": {"template": {"spec": {
		"automountServiceAccountToken": false,
		"containers": [object.union(fixtures.container, {"args": ["migrate"], "env": [{"name": "APP_GRPC__LISTEN", "value": "0.0.0.0:1"}, {"name": "APP_NOPE", "value": "1"}]})],
		"volumes": [{"name": "tmp", "emptyDir": {}}],
	}}}}
	msgs := settings.deny with input as fixtures.render(array.concat(fixtures.app, [job]))
	msgs == {
		"Job/orchestrator-migrate (saga): container orchestrator (orchestrator migrate): APP_NOPE: `nope` is not a setting of the orchestrator (top level); it rejects unknown settings",
		"Job/orchestrator-migrate (saga): container orchestrator (orchestrator migrate): APP_DATABASE__URL must come from a Secret (secretKeyRef)",
	}
}

_docs := {
	"deployment": {"path": "docs/DEPLOYMENT.md", "text": "`APP_HTTP__LISTEN` `APP_GRPC__LISTEN` `APP_DATABASE__CREATE_IF_MISSING` `APP_KAFKA__CREATE_TOPICS` `APP_KAFKA__BROKERS` `APP_DATABASE__URL`, Secret orchestrator-db"},
}

test_documented if {
	msgs := settings.deny with input as fixtures.render(fixtures.app) with data.target.docs as true with data.docs as _docs
	msgs == {"manifests: setting APP_LOG_FORMAT is used by the manifests but not documented in docs/DEPLOYMENT.md"}
}

test_secret_documented if {
	objs := fixtures.patched("Deployment", [{"op": "add", "path": "/spec/template/spec/containers/0/envFrom/-", "value": {"secretRef": {"name": "orchestrator-operators"}}}])
	msgs := settings.deny with input as fixtures.render(objs) with data.target.docs as true with data.docs as _docs
	"manifests: Secret orchestrator-operators is referenced by the manifests but not mentioned in docs/DEPLOYMENT.md" in msgs
	not "manifests: Secret orchestrator-db is referenced by the manifests but not mentioned in docs/DEPLOYMENT.md" in msgs
}

# The services' settings, as their containers get them (env and envFrom, ConfigMaps resolved):
# only names the service accepts, listen addresses reachable on a container port, secrets from
# Secrets, complete and coherent Kafka security and TLS settings whose files are mounted, probes
# on /healthz and /readyz with the right scheme; and every setting and Secret the manifests use is
# documented in docs/DEPLOYMENT.md.
package settings

import data.lib
import rego.v1

_saga := [r | some r in lib.containers; r.saga]

_where(r) := sprintf("%s: container %s (%s)", [lib.label(r.obj), object.get(r.c, "name", "None"), r.saga.service]) if not r.saga.migrate

_where(r) := sprintf("%s: container %s (%s migrate)", [lib.label(r.obj), object.get(r.c, "name", "None"), r.saga.service]) if r.saga.migrate

_running := [r | some r in _saga; not r.saga.migrate]

_has(r, n) if r.env[n]

# ---------------------------------------------------------------- names the service accepts

deny contains msg if {
	some r in _saga
	some n, _ in r.env
	why := setting_error(r.saga.service, n)
	msg := sprintf("%s: %s", [_where(r), why])
}

# Why a service would reject the environment variable n (undefined when it accepts it).
setting_error(service, n) := why if {
	startswith(n, "APP_")
	not regex.match(data.saga.passthrough, n)
	path := split(lower(substring(n, 4, -1)), "__")
	tree := data.saga.settings[service]
	bad := [i | some i in numbers.range(0, count(path) - 1); not _step(tree, path, i)]
	why := _walk_error(service, n, tree, path, bad)
}

# path[i] is a key of the group path[:i] names.
_step(tree, path, i) if {
	node := object.get(tree, array.slice(path, 0, i), null)
	is_object(node)
	path[i] in object.keys(node)
}

_walk_error(_, n, tree, path, bad) := sprintf("%s: names a group of settings, not one setting", [n]) if {
	count(bad) == 0
	node := object.get(tree, path, null)
	_group(node)
}

_group(node) if is_object(node)

_group(node) if node == "map"

# A map's key is the last part of the name: the value is one setting.
_walk_error(_, n, tree, path, bad) := sprintf("%s: map values are plain settings", [n]) if {
	count(bad) > 0
	object.get(tree, array.slice(path, 0, bad[0]), null) == "map"
	bad[0] != count(path) - 1
}

_walk_error(service, n, tree, path, bad) := why if {
	count(bad) > 0
	i := bad[0]
	object.get(tree, array.slice(path, 0, i), null) != "map"
	where := _where_in(array.slice(path, 0, i))
	why := sprintf("%s: `%s` is not a setting of the %s (%s); it rejects unknown settings", [n, path[i], service, where])
}

_where_in(prefix) := "top level" if count(prefix) == 0

else := concat("__", [upper(p) | some p in prefix])

# ---------------------------------------------------------------------- files and secrets

# Files named by settings must be inside a mounted volume.
deny contains msg if {
	some r in _saga
	some n, _ in r.env
	startswith(n, "APP_")
	endswith(n, "_FILE")
	path := lib.value(r.env, n)
	path != ""
	mounts := [object.get(m, "mountPath", "") | some m in object.get(r.c, "volumeMounts", [])]
	not _inside(path, mounts)
	msg := sprintf("%s: %s=%s is not inside any volumeMount %s", [_where(r), n, path, lib.quoted_list(mounts)])
}

_inside(path, mounts) if {
	some m in mounts
	path == m
}

_inside(path, mounts) if {
	some m in mounts
	startswith(path, concat("", [trim_right(m, "/"), "/"]))
}

deny contains msg if {
	some r in _saga
	not r.env.APP_DATABASE__URL.from == "secret"
	msg := sprintf("%s: APP_DATABASE__URL must come from a Secret (secretKeyRef)", [_where(r)])
}

deny contains msg if {
	some r in _saga
	lib.value_of(r.env, "APP_DATABASE__CREATE_IF_MISSING") != "false"
	msg := sprintf("%s: APP_DATABASE__CREATE_IF_MISSING must be false (databases are provisioned, and the default true needs rights on the `postgres` database)", [_where(r)])
}

# ------------------------------------------------------- the long-running services' settings

_listens(r) := ["APP_HTTP__LISTEN", "APP_GRPC__LISTEN"] if r.saga.service == "orchestrator"

else := ["APP_HTTP__LISTEN"]

deny contains msg if {
	some r in _running
	some var in _listens(r)
	not lib.setting(r.env, var)
	msg := sprintf("%s: %s is not set (the default listens on 127.0.0.1 only)", [_where(r), var])
}

# host:port → [host, port] (the last colon splits).
host_port(v) := [m[1], m[2]] if {
	m := regex.find_all_string_submatch_n(`^(.*):([^:]*)$`, v, 1)[0]
} else := ["", v]

deny contains msg if {
	some r in _running
	some var in _listens(r)
	val := lib.setting(r.env, var)
	not host_port(val)[0] in {"0.0.0.0", "[::]"}
	msg := sprintf("%s: %s=%s is not reachable from outside the pod (use 0.0.0.0)", [_where(r), var, val])
}

deny contains msg if {
	some r in _running
	some var in _listens(r)
	val := lib.setting(r.env, var)
	numbers := {p.containerPort | some p in object.get(r.c, "ports", [])}
	not _listen_port_ok(host_port(val)[1], numbers)
	msg := sprintf("%s: %s=%s is not one of the container ports %v", [_where(r), var, val, sort(numbers)])
}

_listen_port_ok(port, numbers) if {
	regex.match(`^[0-9]+$`, port)
	to_number(port) in numbers
}

deny contains msg if {
	some r in _running
	lib.value_of(r.env, "APP_KAFKA__CREATE_TOPICS") != "false"
	msg := sprintf("%s: APP_KAFKA__CREATE_TOPICS must be false (topics come from KafkaTopic resources)", [_where(r)])
}

deny contains msg if {
	some r in _running
	lib.value_of(r.env, "APP_LOG_FORMAT") != "json"
	msg := sprintf("%s: APP_LOG_FORMAT should be json in a cluster", [_where(r)])
}

# Kafka security: complete and coherent.
protocol(r) := lib.value_or(r.env, "APP_KAFKA__SECURITY__PROTOCOL", "plaintext")

deny contains msg if {
	some r in _running
	not protocol(r) in data.saga.kafka_protocols
	msg := sprintf("%s: APP_KAFKA__SECURITY__PROTOCOL=%s is not one of %s", [_where(r), protocol(r), lib.quoted_list(sort(data.saga.kafka_protocols))])
}

deny contains msg if {
	some r in _running
	startswith(protocol(r), "sasl_")
	mech := object.get(r.env, ["APP_KAFKA__SECURITY__SASL_MECHANISM", "value"], "None")
	not mech in data.saga.sasl_mechanisms
	msg := sprintf("%s: APP_KAFKA__SECURITY__SASL_MECHANISM=%s is not one of %s", [_where(r), mech, lib.quoted_list(sort(data.saga.sasl_mechanisms))])
}

deny contains msg if {
	some r in _running
	startswith(protocol(r), "sasl_")
	not lib.setting(r.env, "APP_KAFKA__SECURITY__USERNAME")
	msg := sprintf("%s: %s without APP_KAFKA__SECURITY__USERNAME", [_where(r), protocol(r)])
}

deny contains msg if {
	some r in _running
	startswith(protocol(r), "sasl_")
	not r.env.APP_KAFKA__SECURITY__PASSWORD.from == "secret"
	msg := sprintf("%s: %s needs APP_KAFKA__SECURITY__PASSWORD from a Secret", [_where(r), protocol(r)])
}

deny contains msg if {
	some r in _running
	not startswith(protocol(r), "sasl_")
	sasl := [k | some k in ["APP_KAFKA__SECURITY__SASL_MECHANISM", "APP_KAFKA__SECURITY__USERNAME", "APP_KAFKA__SECURITY__PASSWORD"]; _has(r, k)]
	count(sasl) > 0
	msg := sprintf("%s: SASL settings %s with protocol %s", [_where(r), lib.quoted_list(sasl), protocol(r)])
}

deny contains msg if {
	some r in _running
	protocol(r) in {"ssl", "sasl_ssl"}
	not lib.setting(r.env, "APP_KAFKA__SECURITY__CA_FILE")
	msg := sprintf("%s: %s without APP_KAFKA__SECURITY__CA_FILE (the cluster CA)", [_where(r), protocol(r)])
}

deny contains msg if {
	some r in _running
	protocol(r) in {"plaintext", "sasl_plaintext"}
	_has(r, "APP_KAFKA__SECURITY__CA_FILE")
	msg := sprintf("%s: APP_KAFKA__SECURITY__CA_FILE with protocol %s (no TLS)", [_where(r), protocol(r)])
}

# TLS on the listeners: certificate and key together; HTTPS probes exactly when HTTP has TLS.
deny contains msg if {
	some r in _running
	some prefix in ["APP_GRPC__TLS__", "APP_HTTP__TLS__"]
	have := [k | some k in ["CERT_FILE", "KEY_FILE"]; _has(r, concat("", [prefix, k]))]
	count(have) == 1
	msg := sprintf("%s: %s%s without its pair", [_where(r), prefix, have[0]])
}

deny contains msg if {
	some r in _running
	_has(r, "APP_GRPC__TLS__CLIENT_CA_FILE")
	not _has(r, "APP_GRPC__TLS__CERT_FILE")
	msg := sprintf("%s: APP_GRPC__TLS__CLIENT_CA_FILE (mTLS) needs APP_GRPC__TLS__CERT_FILE/KEY_FILE", [_where(r)])
}

_probes := ["startupProbe", "livenessProbe", "readinessProbe"]

deny contains msg if {
	some r in _running
	some probe in _probes
	not r.c[probe].httpGet
	msg := sprintf("%s: %s must be an httpGet probe of /healthz or /readyz", [_where(r), probe])
}

deny contains msg if {
	some r in _running
	want := _scheme(r)
	some probe in _probes
	get := r.c[probe].httpGet
	scheme := object.get(get, "scheme", "HTTP")
	scheme != want
	msg := sprintf("%s: %s uses %s but the HTTP port serves %s", [_where(r), probe, scheme, want])
}

_scheme(r) := "HTTPS" if _has(r, "APP_HTTP__TLS__CERT_FILE")

else := "HTTP"

deny contains msg if {
	some r in _running
	some probe in _probes
	get := r.c[probe].httpGet
	expect := _probe_path(probe)
	object.get(get, "path", "None") != expect
	msg := sprintf("%s: %s path %s (expected %s)", [_where(r), probe, object.get(get, "path", "None"), expect])
}

_probe_path(probe) := "/readyz" if probe == "readinessProbe"

else := "/healthz"

deny contains msg if {
	some r in _running
	r.obj.kind == "Deployment"
	grace := object.get(lib.pod_spec(r.obj), "terminationGracePeriodSeconds", 30)
	grace < 30
	msg := sprintf("%s: terminationGracePeriodSeconds %v: shutdown drains ≤ 15 s and flushes spans ≤ 5 s; use 30 or more", [lib.label(r.obj), grace])
}

# --------------------------------------------------------------------------- documentation

# Every setting the manifests use (environment names, ConfigMap keys of settings files, not
# dashboards) and every Secret they reference is in docs/DEPLOYMENT.md (when data.target.docs).
_settings_used contains n if {
	some r in lib.containers
	some n, _ in r.env
}

_settings_used contains k if {
	some o in lib.valid_of_kind("ConfigMap")
	object.get(lib.labels(o), "grafana_dashboard", null) != "1"
	some k, _ in object.get(o, "data", {})
}

secrets_used contains s if {
	some r in lib.containers
	some e in r.env
	e.from == "secret"
	s := e.secret
}

secrets_used contains s if {
	some r in lib.containers
	some src in object.get(r.c, "envFrom", [])
	s := src.secretRef.name
}

secrets_used contains s if {
	some o in lib.workloads
	some v in object.get(lib.pod_spec(o), "volumes", [])
	s := v.secret.secretName
}

deny contains msg if {
	data.target.docs
	some n in _settings_used
	not contains(data.docs.deployment.text, concat("", ["`", n, "`"]))
	msg := sprintf("manifests: setting %s is used by the manifests but not documented in %s", [n, data.docs.deployment.path])
}

deny contains msg if {
	data.target.docs
	some s in secrets_used
	not contains(data.docs.deployment.text, s)
	msg := sprintf("manifests: Secret %s is referenced by the manifests but not mentioned in %s", [s, data.docs.deployment.path])
}

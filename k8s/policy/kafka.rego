# Strimzi KafkaTopics and KafkaUsers against the services' settings: one cluster, topics that are
# exactly the six the services use (with their prefix) and have enough partitions for the
# consumers an autoscaler may start, users that exist and authenticate as configured, and ACLs
# that are exactly what each service reads and writes.
package kafka

import data.autoscaling
import data.lib
import rego.v1

_topics := lib.valid_of_kind("KafkaTopic")

_users := lib.valid_of_kind("KafkaUser")

_strimzi := [o | some o in lib.objects; startswith(object.get(o, "apiVersion", ""), "kafka.strimzi.io/")]

deny contains msg if {
	clusters := {sprintf("%v", [object.get(lib.labels(o), "strimzi.io/cluster", "None")]) | some o in _strimzi}
	count(clusters) > 1
	msg := sprintf("manifests: Strimzi resources name different clusters %s", [lib.quoted_list(sort(clusters))])
}

deny contains msg if {
	some t in _topics
	isr := t.spec.config["min.insync.replicas"]
	isr != null
	to_number(isr) > t.spec.replicas
	msg := sprintf("%s: min.insync.replicas %v > replicas %v: no write could succeed with acks=all", [lib.label(t), isr, t.spec.replicas])
}

# ------------------------------------------------------------- topics against the services

# Only when there are services and Strimzi resources to compare.
_compare if {
	count(lib.services) > 0
	count(_strimzi) > 0
}

_prefixes := {svc: lib.value_or(r.env, "APP_KAFKA__TOPIC_PREFIX", "") | some svc, r in lib.services}

deny contains msg if {
	_compare
	count({p | some p in _prefixes}) > 1
	msg := sprintf("manifests: the services use different topic prefixes %v", [_prefixes])
}

# The prefix of the first service in the render (they should all be the same, see above).
prefix := _prefixes[first] if {
	order := [[i, svc] | some svc, r in lib.services; some i, o in lib.objects; o == r.obj]
	first := sort(order)[0][1]
} else := ""

_topic_name(t) := object.get(t.spec, "topicName", lib.name(t))

_have := {_topic_name(t) | some t in _topics}

_want := {concat("", [prefix, t]) | some t in data.saga.topics}

deny contains msg if {
	_compare
	count(_topics) > 0
	some n in _want
	not n in _have
	msg := sprintf("manifests: no KafkaTopic for topic %s (APP_KAFKA__TOPIC_PREFIX='%s')", [n, prefix])
}

deny contains msg if {
	_compare
	some t in _topics
	n := _topic_name(t)
	not n in _want
	msg := sprintf("%s: topic %s is not one the services use with prefix '%s'", [lib.label(t), n, prefix])
}

deny contains msg if {
	_compare
	some svc, access in data.saga.kafka_access
	some read in access.read
	some t in _topics
	_topic_name(t) == concat("", [prefix, read])
	hi := autoscaling.max_replicas[svc]
	hi > t.spec.partitions
	msg := sprintf("%s: %v partitions but the %s may scale to %v consumers: the extra ones would idle", [lib.label(t), t.spec.partitions, svc, hi])
}

# ------------------------------------------------------------------------------------ users

_user_name(u) := object.get(u.spec, "userName", lib.name(u))

_protocol(r) := lib.value_or(r.env, "APP_KAFKA__SECURITY__PROTOCOL", "plaintext")

_sasl(svc) if startswith(_protocol(lib.services[svc]), "sasl_")

# The KafkaUser a service authenticates as (SASL: by user name; else: labelled with its name).
user_of(svc) := u if {
	_compare
	_sasl(svc)
	uname := lib.value_of(lib.services[svc].env, "APP_KAFKA__SECURITY__USERNAME")
	us := [u | some u in _users; _user_name(u) == uname]
	u := us[count(us) - 1]
}

user_of(svc) := u if {
	_compare
	lib.services[svc]
	not _sasl(svc)
	us := [u | some u in _users; lib.labels(u)["app.kubernetes.io/name"] == svc]
	u := us[0]
}

deny contains msg if {
	_compare
	some svc, r in lib.services
	_sasl(svc)
	not user_of(svc)
	count(_users) + count(_topics) > 0
	uname := lib.value_of(r.env, "APP_KAFKA__SECURITY__USERNAME")
	msg := sprintf("%s: the %s authenticates as %s but there is no such KafkaUser", [lib.label(r.obj), svc, lib.repr(uname)])
}

deny contains msg if {
	some svc, r in lib.services
	_sasl(svc)
	u := user_of(svc)
	mech := lib.setting(r.env, "APP_KAFKA__SECURITY__SASL_MECHANISM")
	auth := object.get(u.spec, ["authentication", "type"], "None")
	lower(mech) != auth
	msg := sprintf("%s: the %s uses %s but KafkaUser %s has authentication %s", [lib.label(r.obj), svc, mech, lib.name(u), auth])
}

deny contains msg if {
	some svc, r in lib.services
	_sasl(svc)
	u := user_of(svc)
	pw := r.env.APP_KAFKA__SECURITY__PASSWORD
	pw.from == "secret"
	[pw.secret, pw.key] != [lib.name(u), "password"]
	msg := sprintf("%s: the %s's password comes from Secret %v/%v, but the User Operator writes KafkaUser %s's to %s/password", [lib.label(r.obj), svc, pw.secret, pw.key, lib.name(u), lib.name(u)])
}

# [resource type, name, pattern type, operation, host]
_grants(u) := {[res.type, res.name, object.get(res, "patternType", "literal"), op, object.get(acl, "host", "*")] |
	some acl in object.get(u.spec, ["authorization", "acls"], [])
	object.get(acl, "type", "allow") == "allow"
	res := object.get(acl, "resource", {})
	some op in object.get(acl, "operations", [])
}

_needs(svc) := needs if {
	access := data.saga.kafka_access[svc]
	reads := {["topic", concat("", [prefix, t]), "literal", op, "*"] | some t in access.read; some op in ["Read", "Describe"]}
	writes := {["topic", concat("", [prefix, t]), "literal", op, "*"] | some t in access.write; some op in ["Write", "Describe"]}
	needs := (reads | writes) | {["group", concat("", [prefix, access.group]), "literal", "Read", "*"]}
}

deny contains msg if {
	some svc, _ in lib.services
	u := user_of(svc)
	some g in (_needs(svc) - _grants(u))
	msg := sprintf("%s: missing ACL for the %s: %s on %s %s", [lib.label(u), svc, g[3], g[0], g[1]])
}

deny contains msg if {
	some svc, _ in lib.services
	u := user_of(svc)
	some g in (_grants(u) - _needs(svc))
	msg := sprintf("%s: ACL beyond what the %s needs: %v on %v %v (%v, host %v)", [lib.label(u), svc, g[3], g[0], g[1], g[2], g[4]])
}

deny contains msg if {
	_compare
	checked := {lib.name(u) | some svc, _ in lib.services; u := user_of(svc)}
	some u in _users
	not lib.name(u) in checked
	not object.get(lib.labels(u), "app.kubernetes.io/name", null) in object.keys(lib.services)
	msg := sprintf("%s: KafkaUser of no service in the manifests", [lib.label(u)])
}

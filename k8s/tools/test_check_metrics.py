"""Unit tests of check_metrics.py (run: python3 -m unittest discover -s k8s/tools -p 'test_*.py',
or `check_metrics.py --self-test`; pytest collects them too). Fixtures: testdata/check_metrics/."""

import contextlib
import io
import unittest
from pathlib import Path

import check_metrics as cm

HERE = Path(__file__).resolve().parent
DATA = HERE / "testdata" / "check_metrics"
SCRAPE = DATA / "scrape.prom"


def inventory() -> cm.Inventory:
    inv = cm.Inventory()
    inv.add_scrape(SCRAPE.read_text(), str(SCRAPE))
    return inv


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cm.main(list(argv))
    return code, out.getvalue()


class Parsing(unittest.TestCase):
    def test_selectors_matchers_and_groupings(self):
        sels, groups = cm.parse(
            'sum by (namespace, saga_type) (rate(saga_finished_total{state="failed", saga_type=~"a|b"}[5m] offset 1h))'
            ' / on (saga_type) group_left max without (pod) (sagas_by_state)')
        self.assertEqual([s.name for s in sels], ["saga_finished_total", "sagas_by_state"])
        self.assertEqual(sels[0].matchers, [("state", "=", "failed"), ("saga_type", "=~", "a|b")])
        self.assertEqual([(g.keyword, g.labels) for g in groups],
                         [("by", ["namespace", "saga_type"]), ("on", ["saga_type"]),
                          ("group_left", []), ("without", ["pod"])])
        self.assertEqual([s.name for s in groups[0].selectors], ["saga_finished_total"])

    def test_functions_keywords_and_grafana_variables_are_not_metrics(self):
        sels, _ = cm.parse('histogram_quantile(0.99, sum(rate(x_bucket{namespace="$namespace"}[$__rate_interval])) by (le))'
                           ' > bool 1 and avg_over_time(y[1d:10m]) unless z offset 5m or vector(1) * Inf')
        self.assertEqual([s.name for s in sels], ["x_bucket", "y", "z"])

    def test_trailing_grouping_and_name_matcher(self):
        sels, groups = cm.parse('sum(rate({__name__="a_total", topic="t"}[1m])) by (topic)')
        self.assertEqual((sels[0].name, sels[0].matchers), ("a_total", [("topic", "=", "t")]))
        self.assertEqual((groups[0].keyword, groups[0].labels), ("by", ["topic"]))

    def test_unbalanced_or_broken_expression_is_a_problem(self):
        self.assertTrue(cm.check_expression("sum(rate(x[5m])", inventory())[0].startswith("unparsable"))
        self.assertTrue(cm.check_expression('x{state=}', inventory())[0].startswith("unparsable"))


class Checks(unittest.TestCase):
    def setUp(self):
        self.inv = inventory()

    def check(self, expr, **kw):
        return cm.check_expression(expr, self.inv, **kw)

    def test_existing_names_labels_and_values_pass(self):
        self.assertEqual(self.check(
            'sum by (namespace, job, saga_type, state) (rate(saga_finished_total{state=~"completed|failed", pod!="x"}[5m]))'), [])

    def test_unknown_metric(self):
        self.assertEqual(self.check("rate(saga_finish_total[5m]) > 0"),
                         ["metric saga_finish_total is not in any scrape"])

    def test_histogram_series_exist_but_the_bare_name_does_not(self):
        self.assertEqual(self.check("rate(outbox_publish_lag_seconds_bucket[5m]) + rate(outbox_publish_lag_seconds_count[5m])"), [])
        self.assertEqual(self.check("rate(outbox_publish_lag_seconds[5m])"),
                         ["metric outbox_publish_lag_seconds is not in any scrape"])

    def test_unknown_label_and_value(self):
        problems = self.check('sagas_by_state{typ="x", state="parked"}')
        self.assertIn("label typ of metric sagas_by_state is not in any scrape (it has: saga_type, state)", problems)
        self.assertIn('value state="parked" of metric sagas_by_state is not in any scrape (values: running)', problems)
        self.assertEqual(self.check('sagas_by_state{state="parked"}', ignore_values=True), [])

    def test_regex_alternatives_are_checked_one_by_one(self):
        problems = self.check('readiness_check_failing_seconds{check=~"outbox relay|command consumer"}')
        self.assertEqual(len(problems), 1)
        self.assertIn("command consumer", problems[0])
        self.assertEqual(self.check('readiness_check_failing_seconds{check=~".*consumer"}'), [])
        self.assertIn("matches", self.check('readiness_check_failing_seconds{check=~"^x.*"}')[0])

    def test_prometheus_added_labels_and_variables_are_ignored(self):
        self.assertEqual(self.check('max by (job, instance, pod) (sagas_by_state{namespace="saga", job="o", state="$state"})'), [])

    def test_grouping_labels_must_exist_on_the_aggregated_metrics(self):
        self.assertEqual(self.check("sum by (sagatype) (sagas_by_state)"),
                         ["label sagatype in by (…) is not a label of sagas_by_state in any scrape"])
        self.assertEqual(self.check('sum by (dst) (label_replace(sagas_by_state, "dst", "$1", "state", "(.*)"))'), [])


class Files(unittest.TestCase):
    def test_rules_file_names_every_mistake_and_accepts_recorded_names(self):
        code, out = run("--scrape", str(SCRAPE), str(DATA / "rules.yaml"))
        self.assertEqual(code, 1, out)
        missing = [line for line in out.splitlines() if line.startswith("MISSING")]
        self.assertEqual(len(missing), 5, out)
        for want in ("alert Bad: label sagatype in by (…)", "alert Bad: metric saga_finish_total",
                     'alert Bad: value state="parked"', "alert Bad: label typ of metric sagas_by_state",
                     "alert Bad: label type in on (…)"):
            self.assertTrue(any(want in line for line in missing), f"{want!r} not in\n{out}")
        self.assertNotIn("UsesRecorded", out)
        self.assertNotIn("alert Good", out)

    def test_prometheusrule_and_dashboard_configmap(self):
        code, out = run("--scrape", str(SCRAPE), str(DATA / "prometheusrule.yaml"))
        self.assertEqual(code, 1, out)
        self.assertIn('MISSING prometheusrule.yaml: group fixture: alert RelayStuck: value check=~"…command consumer…"', out)
        self.assertIn("2 expression(s)", out)
        self.assertEqual(out.count("MISSING"), 1, out)

    def test_dashboard_json(self):
        code, out = run("--scrape", str(SCRAPE), str(DATA / "dashboard.json"))
        self.assertEqual(code, 1, out)
        self.assertIn("MISSING dashboard.json: variable check: label chek in by (…)", out)
        self.assertIn("MISSING dashboard.json: panel 'Nested' target A: value outcome=\"dead_letter\"", out)
        self.assertIn("MISSING dashboard.json: panel 'Histogram' target B: metric outbox_publish_lag_seconds is not", out)
        self.assertEqual(out.count("MISSING"), 3, out)
        code, out = run("--ignore-values", "--scrape", str(SCRAPE), str(DATA / "dashboard.json"))
        self.assertEqual(out.count("MISSING"), 2, out)

    def test_several_scrapes_add_up(self):
        code, out = run("--scrape", str(SCRAPE), "--scrape", str(HERE / "testdata" / "metrics-inventory.prom"),
                        str(DATA / "prometheusrule.yaml"))
        self.assertEqual(code, 0, out)

    def test_usage_and_unreadable_input(self):
        self.assertEqual(run("--scrape", str(SCRAPE), str(DATA / "nope.yaml"))[0], 2)
        with self.assertRaises(SystemExit):
            run(str(DATA / "rules.yaml"))

    def test_the_components_rules_and_dashboard_use_only_inventoried_metrics(self):
        monitoring = HERE.parent / "components" / "monitoring"
        code, out = run("--scrape", str(HERE / "testdata" / "metrics-inventory.prom"),
                        str(monitoring / "prometheusrule.yaml"), str(monitoring / "dashboards" / "saga-coordinator.json"))
        self.assertEqual(code, 0, out)


if __name__ == "__main__":
    unittest.main()

"""`rlbench check --format junit`: the gate's verdicts as JUnit XML, for CI test reporters.

    rlbench check new.json --baseline base.json --format junit --output rlbench-check.xml

GitHub (e.g. dorny/test-reporter, mikepenz/action-junit-report) and GitLab (`artifacts:reports:junit`)
read it as they read a test run's results:

    <testsuites name="rlbench check" tests failures errors skipped>
      <testsuite name="rlbench check: <run id>" ...>        one per run
        <properties>                                     the reports, their machines, the thresholds
        <testcase classname="<run id>" name="<metric>">   one per gated metric (and run status)
          <failure type="regression" message="...">      a regression, with the numbers
          <skipped message="...">                        not comparable or not gated, with the reason
          <properties> verdict, baseline, new, unit, threshold
          <system-out>                                   the verdict in one line

A passing metric is a test case with no child but its properties and its one line. Built with
xml.etree, so every name and message from a report is escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from rlbench.report.gate import CheckResult
from rlbench.report.verdicts import CheckInputs, Verdict, counts, verdict_line, verdicts


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def _testcase(parent: ET.Element, v: Verdict) -> None:
    case = ET.SubElement(parent, "testcase", classname=v.run, name=v.metric, time="0")
    message = v.message()
    if v.outcome == "failed":
        ET.SubElement(case, "failure", type="regression", message=message).text = \
            f"{v.run}: {v.metric}: {message}"
    elif v.outcome == "skipped":
        ET.SubElement(case, "skipped", message=message)
    properties = ET.SubElement(case, "properties")
    for name, value in (("verdict", v.label), ("area", v.area), ("baseline", _number(v.baseline)),
                        ("new", _number(v.new)), ("unit", v.unit), ("threshold", v.threshold)):
        ET.SubElement(properties, "property", name=name, value=value)
    ET.SubElement(case, "system-out").text = message


def _totals(element: ET.Element, items: list[Verdict]) -> None:
    tally = counts(items)
    element.set("tests", str(len(items)))
    element.set("failures", str(tally["failed"]))
    element.set("errors", "0")
    element.set("skipped", str(tally["skipped"]))
    element.set("time", "0")


def junit_xml(inputs: CheckInputs, result: CheckResult, timestamp: str | None = None) -> str:
    """The JUnit XML document (a string with its XML declaration) of one `check`."""
    items = verdicts(result)
    root = ET.Element("testsuites", name="rlbench check")
    _totals(root, items)
    runs = list(dict.fromkeys(v.run for v in items))
    for run in runs:
        own = [v for v in items if v.run == run]
        suite = ET.SubElement(root, "testsuite", name=f"rlbench check: {run}")
        _totals(suite, own)
        if timestamp:
            suite.set("timestamp", timestamp)
        properties = ET.SubElement(suite, "properties")
        for name, value in (("report", inputs.report), ("baseline", inputs.baseline),
                            ("report machine", inputs.machines[0]), ("baseline machine", inputs.machines[1]),
                            *((f"threshold {a}", str(t)) for a, t in inputs.thresholds.items()),
                            ("memory gate", result.memory_gates.get(run, "")),
                            ("hardware difference", result.hardware or "")):
            ET.SubElement(properties, "property", name=name, value=value)
        for v in own:
            _testcase(suite, v)
        notes = [n for n in result.notes if n.startswith(f"{run}:")]
        ET.SubElement(suite, "system-out").text = "\n".join([verdict_line(result), *inputs.settings, *notes])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

"""The compose stack's Collector image runs as uid 10001 (otel/opentelemetry-collector-contrib, from
scratch); a named volume is created root-owned, so file_storage could not open its queue there and
the pipelines would not start. An init service makes the volume the Collector's before it starts.
(No Docker engine here: checked on the compose file.)"""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).parent.parent / "collector" / "docker-compose.yaml"
COLLECTOR_UID = "10001"


def test_the_collectors_named_volumes_are_chowned_to_its_uid_before_it_starts() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    otelcol = services["otelcol"]
    named = {
        source: target
        for source, target, *_ in (v.split(":") for v in otelcol.get("volumes", []))
        if not source.startswith((".", "/"))
    }
    assert named and set(named) <= set(compose["volumes"])
    assert otelcol.get("user", COLLECTOR_UID).split(":")[0] == COLLECTOR_UID
    depends = otelcol["depends_on"]
    assert isinstance(depends, dict)
    for source, target in named.items():
        inits = [
            name
            for name, service in services.items()
            if name != "otelcol"
            and f"{source}:{target}" in service.get("volumes", [])
            and service.get("command", [])[:3] == ["chown", "-R", f"{COLLECTOR_UID}:{COLLECTOR_UID}"]
            and target in service["command"]
        ]
        assert inits, f"nothing makes volume {source} ({target}) uid {COLLECTOR_UID}'s"
        for name in inits:
            assert depends[name] == {"condition": "service_completed_successfully"}
            assert services[name]["image"].rsplit(":", 1)[1][0].isdigit()  # pinned

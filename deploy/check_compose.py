#!/usr/bin/env python3
"""Static checks of a Compose file that need no Docker engine.

Reads the file with PyYAML (anchors and ``<<`` merge keys resolved) and checks what
``docker compose config`` would reject or what would break at ``up`` time:

- top-level keys are Compose keys (or ``x-`` extensions); every service has ``image`` or ``build``;
- every ``depends_on`` names an existing service, with a known condition, without cycles;
  ``service_healthy`` targets have a healthcheck (their own or the image's is not knowable here,
  so a healthcheck must be declared or the service must build an image whose Dockerfile has
  ``HEALTHCHECK``); ``service_completed_successfully`` targets do not restart;
- every network and named volume a service uses is declared at the top level;
- every relative bind-mount source exists (else Docker silently creates an empty directory);
- no two services publish the same host port; replicated services publish no fixed host port and
  have no ``container_name``;
- optionally, the file validates against the Compose JSON Schema (``--schema``).

Usage: ``python deploy/check_compose.py [docker-compose.yml] [--schema compose-spec.json]
[--allow-missing PATH ...]``. Exit status 0 when clean, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

TOP_LEVEL_KEYS = {
    "version",
    "name",
    "services",
    "networks",
    "volumes",
    "secrets",
    "configs",
    "include",
    "models",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def depends_on_targets(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` in either syntax as {service: condition}."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def service_networks(service: dict[str, Any]) -> list[str]:
    raw = service.get("networks") or []
    return list(raw) if isinstance(raw, list | dict) else []


def split_volume(entry: Any) -> tuple[str, str | None]:
    """(type, source) of a service volume entry in short or long syntax."""
    if isinstance(entry, dict):
        return entry.get("type", "volume"), entry.get("source")
    parts = str(entry).split(":")
    if len(parts) == 1:  # anonymous volume: just a container path
        return "volume", None
    source = parts[0]
    if source.startswith((".", "/", "~", "$")):
        return "bind", source
    return "volume", source


def host_ports(service: dict[str, Any]) -> list[str]:
    """Published host ports as 'ip:port/proto' strings (fixed ports only)."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published"):
                ip = entry.get("host_ip", "0.0.0.0")
                found.append(f"{ip}:{entry['published']}/{entry.get('protocol', 'tcp')}")
            continue
        text, _, proto = str(entry).partition("/")
        parts = text.split(":")
        if len(parts) == 3:
            found.append(f"{parts[0]}:{parts[1]}/{proto or 'tcp'}")
        elif len(parts) == 2:
            found.append(f"0.0.0.0:{parts[0]}/{proto or 'tcp'}")
    return found


def find_cycle(graph: dict[str, Iterable[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return path[path.index(node) :] + [node]
        if state.get(node) == 2 or node not in graph:
            return None
        state[node] = 1
        for nxt in graph[node]:
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        state[node] = 2
        return None

    for start in graph:
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def dockerfile_has_healthcheck(base: Path, build: Any) -> bool:
    context = build if isinstance(build, str) else (build or {}).get("context", ".")
    name = "Dockerfile" if isinstance(build, str) else (build or {}).get("dockerfile", "Dockerfile")
    path = base / context / name
    if not path.is_file():
        return False
    return any(
        line.strip().upper().startswith("HEALTHCHECK CMD")
        or line.strip().upper().startswith("HEALTHCHECK --")
        for line in path.read_text().splitlines()
    )


def check(doc: Any, base: Path, allow_missing: set[str]) -> list[str]:
    if not isinstance(doc, dict):
        return ["the file is not a YAML mapping"]
    problems: list[str] = []
    for key in doc:
        if key not in TOP_LEVEL_KEYS and not str(key).startswith("x-"):
            problems.append(f"unknown top-level key {key!r}")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return problems + ["no services defined"]
    networks = set((doc.get("networks") or {}).keys()) | {"default"}
    volumes = set((doc.get("volumes") or {}).keys())

    graph: dict[str, list[str]] = {}
    seen_ports: dict[str, str] = {}
    for name, svc in services.items():
        where = f"services.{name}"
        if not isinstance(svc, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: needs 'image' or 'build'")

        deps = depends_on_targets(svc)
        graph[name] = list(deps)
        for dep, condition in deps.items():
            if dep not in services:
                problems.append(f"{where}.depends_on: unknown service {dep!r}")
                continue
            if dep == name:
                problems.append(f"{where}.depends_on: depends on itself")
            if condition not in CONDITIONS:
                problems.append(f"{where}.depends_on.{dep}: unknown condition {condition!r}")
            target = services[dep] or {}
            if condition == "service_healthy":
                hc = target.get("healthcheck")
                declared = isinstance(hc, dict) and not hc.get("disable") and hc.get("test")
                from_image = (
                    hc is None
                    and "build" in target
                    and dockerfile_has_healthcheck(base, target["build"])
                )
                if not (declared or from_image):
                    problems.append(
                        f"{where}.depends_on.{dep}: service_healthy but {dep!r} has no healthcheck"
                    )
            if condition == "service_completed_successfully" and target.get(
                "restart", "no"
            ) not in ("no", "on-failure", False):
                problems.append(
                    f"{where}.depends_on.{dep}: waits for {dep!r} to complete but it "
                    f"restarts ({target.get('restart')!r})"
                )

        for net in service_networks(svc):
            if net not in networks:
                problems.append(f"{where}.networks: undeclared network {net!r}")

        for entry in svc.get("volumes") or []:
            kind, source = split_volume(entry)
            if kind == "volume" and source and source not in volumes:
                problems.append(f"{where}.volumes: undeclared named volume {source!r}")
            if kind == "bind" and source and not source.startswith(("/", "$", "~")):
                rel = str(Path(source))
                if rel not in allow_missing and not (base / source).exists():
                    problems.append(f"{where}.volumes: bind source {source!r} does not exist")

        replicas = ((svc.get("deploy") or {}).get("replicas")) or 1
        ports = host_ports(svc)
        if replicas > 1 and ports:
            problems.append(f"{where}: {replicas} replicas cannot publish fixed host ports {ports}")
        if replicas > 1 and "container_name" in svc:
            problems.append(f"{where}: {replicas} replicas cannot share a container_name")
        for port in ports:
            if port in seen_ports:
                problems.append(
                    f"{where}.ports: host port {port} already published by {seen_ports[port]!r}"
                )
            seen_ports[port] = name

    cycle = find_cycle(graph)
    if cycle:
        problems.append("depends_on cycle: " + " -> ".join(cycle))
    return problems


def check_schema(doc: Any, schema_path: Path) -> list[str]:
    import jsonschema

    schema = json.loads(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    return [
        f"schema: {'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="docker-compose.yml", type=Path)
    parser.add_argument("--schema", type=Path, help="Compose JSON Schema to validate against")
    parser.add_argument(
        "--allow-missing",
        action="append",
        default=[],
        metavar="PATH",
        help="bind-mount source (relative to the file) allowed to be absent",
    )
    args = parser.parse_args(argv)

    try:
        doc = yaml.safe_load(args.file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    allow = {str(Path(p)) for p in args.allow_missing}
    problems = check(doc, args.file.resolve().parent, allow)
    if args.schema:
        problems += check_schema(doc, args.schema)
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.file}: ok ({len(doc['services'])} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the requirements of pyproject.toml extras, one per line, for `pip install -r`.

scripts/lock.sh (make lock) compiles each install target's list into a hashed lock file in locks/,
from which make serve, make test and the Dockerfile install.

    python deploy/pyproject_requirements.py pyproject.toml serve \
        --ort-package onnxruntime-gpu --ort-extras cuda,cudnn

--ort-package / --ort-extras replace the ONNX Runtime requirement (keeping its version
specifier): `onnxruntime-gpu[cuda,cudnn]` pulls the CUDA and cuDNN runtime wheels,
`onnxruntime-gpu` alone falls back to the CPU, and `onnxruntime` is the smaller CPU-only build.
"""

from __future__ import annotations

import argparse
import re
import tomllib

ORT_NAMES = {"onnxruntime", "onnxruntime-gpu"}
# name, optional [extras], the rest (version specifier and environment marker)
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def requirements(pyproject: dict, extras: list[str], ort_package: str | None, ort_extras: str | None) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines {sorted(optional)}")
    lines: list[str] = []
    for requirement in project.get("dependencies", []) + [r for extra in extras for r in optional[extra]]:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        name, own_extras, rest = match.groups()
        if name.lower().replace("_", "-") in ORT_NAMES and (ort_package is not None or ort_extras is not None):
            name = ort_package or name
            wanted = ort_extras if ort_extras is not None else (own_extras or "").strip("[]")
            own_extras = f"[{wanted}]" if wanted.strip() else ""
        line = f"{name}{own_extras or ''}{rest}".strip()
        if line not in lines:
            lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to pyproject.toml")
    parser.add_argument("extras", nargs="*", help="optional-dependency groups to include")
    parser.add_argument("--ort-package", help="ONNX Runtime distribution: onnxruntime-gpu or onnxruntime")
    parser.add_argument("--ort-extras", help="extras for it, e.g. cuda,cudnn; empty for none")
    args = parser.parse_args()
    if args.ort_package is not None and args.ort_package not in ORT_NAMES:
        parser.error(f"--ort-package must be one of {sorted(ORT_NAMES)}, not {args.ort_package!r}")
    with open(args.pyproject, "rb") as file:
        pyproject = tomllib.load(file)
    print("\n".join(requirements(pyproject, args.extras, args.ort_package, args.ort_extras)))


if __name__ == "__main__":
    main()
